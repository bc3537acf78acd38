"""What ``REDIS_URL`` names: one Redis, or a Redis Cluster by its seeds.

Pure parsing, no I/O: ``app.config`` calls it at boot so a bad value stops the process with
a clear message, and ``app.redis_clients`` builds the clients from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}


@dataclass(frozen=True)
class RedisTarget:
    """One plain Redis URL, or a cluster's seed nodes as URLs."""

    urls: tuple[str, ...]
    cluster: bool = False


def parse_redis_url(value: str) -> RedisTarget:
    """Parse ``REDIS_URL``; raise ValueError naming what is wrong.

    ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS)
    names a cluster by seed nodes: any reachable one is enough to discover the rest. Each
    seed becomes a ``redis://`` (or ``rediss://``) URL carrying the shared credentials.
    Anything else is one ``redis://``, ``rediss://`` or ``unix://`` URL. A list of them (the
    client-side sharding Parley had before it ran on a cluster) is refused with the way out.
    """
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        return RedisTarget(urls=_cluster_seeds(CLUSTER_SCHEMES[scheme.lower()], rest), cluster=True)
    urls = tuple(item.strip() for item in value.split(",") if item.strip())
    if not urls:
        raise ValueError("REDIS_URL is empty")
    for url in urls:
        item_scheme = url.partition("://")[0].lower()
        if item_scheme in CLUSTER_SCHEMES:
            raise ValueError(f"a cluster URL must come alone and first, got {value!r}")
        if item_scheme not in PLAIN_SCHEMES or "://" not in url:
            raise ValueError(f"expected redis://, rediss://, unix:// or redis+cluster:// URLs, got {url!r}")
    if len(urls) > 1:
        raise ValueError(
            "several Redis URLs (client-side shards) are no longer supported: run a Redis Cluster"
            " and set REDIS_URL=redis+cluster://host:port[,host:port...] (docs/ARCHITECTURE.md)"
        )
    _check_server(urls[0])
    return RedisTarget(urls=urls)


def _check_server(url: str) -> None:
    """A one-server URL names a host (or a socket path) and, if any, a valid port."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{url!r} names no socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        _ = parts.port  # parsing it is the check: a bad or out-of-range port raises
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None


def _cluster_seeds(scheme: str, rest: str) -> tuple[str, ...]:
    userinfo, at, hosts = rest.rpartition("@")
    credentials = f"{userinfo}@" if at else ""
    hosts, _, path = hosts.partition("/")
    if path not in {"", "0"}:
        raise ValueError(f"a Redis Cluster has only database 0, got /{path}")
    if "?" in hosts:
        raise ValueError("cluster URLs take no query options")
    seeds = [item.strip() for item in hosts.split(",") if item.strip()]
    if not seeds:
        raise ValueError("a cluster URL needs at least one host:port seed")
    urls = []
    for seed in seeds:
        host, port = _host_port(seed)
        urls.append(f"{scheme}://{credentials}{host}:{port}")
    return tuple(urls)


def _host_port(seed: str) -> tuple[str, int]:
    parsed = urlsplit(f"//{seed}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None or port == 0:
        raise ValueError(f"each cluster seed must be host:port, got {seed!r}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return host, port


def seed_address(url: str) -> tuple[str, int]:
    """(host, port) of a seed URL ``parse_redis_url`` produced."""
    parsed = urlsplit(url)
    return parsed.hostname or "", parsed.port or 6379
