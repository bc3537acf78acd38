"""Connection options every Redis client of Parley's shares: the channel layer's and history's."""

from __future__ import annotations

import redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError

# A command that fails on a pooled connection that died with a Redis restart is retried on a
# fresh one. Safe for both users: a repeated PUBLISH is skipped by consumers' id checks, and
# every history append carries a dedupe key. A command Redis did not answer within the socket
# timeout is not: a stalled Redis is no quicker on a fresh connection, and each retry would
# wait the whole timeout again (a send answered `unavailable` after 15 s, not 5). A connection
# that died without a word (a NAT or balancer dropping an idle flow: no FIN, no RST) looks the
# same, a timeout: its command fails after 5 s (a send `unavailable`, resent by its client; a
# broadcast lost, refilled by the tail watcher), and the next command opens a fresh one.
RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2, supported_errors=(RedisConnectionError,))

# redis-py names itself to the server (CLIENT SETINFO) on each new connection, looking its own
# version up in the installed packages' metadata every time: a few ms per connection on the
# readiness path. The same name and version, read once.
DRIVER = DriverInfo(lib_version=redis.__version__)
