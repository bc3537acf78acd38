"""Connection options every Redis client of Parley's shares: the channel layer's and history's."""

from __future__ import annotations

import redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo

# A command that fails on a pooled connection that died with a Redis restart is retried on a
# fresh one. Safe for both users: a repeated PUBLISH is skipped by consumers' id checks, and
# every history append carries a dedupe key.
RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)

# redis-py names itself to the server (CLIENT SETINFO) on each new connection, looking its own
# version up in the installed packages' metadata every time: a few ms per connection on the
# readiness path. The same name and version, read once.
DRIVER = DriverInfo(lib_version=redis.__version__)
