"""Docker for the compose path on machines without it set up: the engine, Compose v2, base images."""
