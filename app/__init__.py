"""Parley: a WebSocket chat service on Django Channels, built for fast start and graceful drain."""
