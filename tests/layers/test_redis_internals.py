"""The channels-redis private members Parley relies on are still there, of the same kind and
signature; and no other module of ``app`` touches channels-redis at all.

A failure here after upgrading channels-redis names the member that changed: adapt
``app/layers/redis_internals.py`` (and its ``RELIED_ON``) before anything else.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisSingleShardConnection

from app.layers import redis_internals
from app.layers.redis_internals import RELIED_ON, Member

pytestmark = pytest.mark.unit

APP = Path(__file__).resolve().parents[2] / "app"

# Fresh instances, for members that only exist once __init__ has run (no I/O happens here).
INSTANCES = {
    "channels_redis.pubsub.RedisPubSubChannelLayer": lambda: RedisPubSubChannelLayer(),
    "channels_redis.pubsub.RedisSingleShardConnection": lambda: RedisSingleShardConnection(
        {"address": "redis://127.0.0.1:1"}, None
    ),
}


def owner_of(dotted: str) -> object:
    try:
        return importlib.import_module(dotted)
    except ImportError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("member", RELIED_ON, ids=[f"{m.owner}.{m.name}" for m in RELIED_ON])
def test_a_private_member_we_rely_on_is_unchanged(member: Member) -> None:
    where = f"{member.owner}.{member.name}"
    if member.kind == "attribute":
        instance = INSTANCES[member.owner]()
        assert hasattr(instance, member.name), f"channels-redis no longer sets {where}"
        kind = type(getattr(instance, member.name)).__name__
        assert kind in member.detail, f"{where} is now a {kind}, not {' or '.join(member.detail)}"
        return
    value = getattr(owner_of(member.owner), member.name, None)
    assert value is not None, f"channels-redis no longer has {where}"
    assert inspect.isfunction(value), f"{where} is no longer a function"
    is_coroutine = inspect.iscoroutinefunction(value)
    assert is_coroutine == (member.kind == "coroutine function"), f"{where} is no longer a {member.kind}"
    parameters = tuple(inspect.signature(value).parameters)
    assert parameters == member.detail, f"{where} now takes {parameters}, not {member.detail}"


def test_every_private_name_imported_is_listed() -> None:
    tree = ast.parse(Path(redis_internals.__file__).read_text())
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("channels_redis")
        for alias in node.names
        if alias.name.startswith("_")
    }
    listed = {(m.owner, m.name) for m in RELIED_ON}
    assert imported <= listed, f"imported but not in RELIED_ON: {sorted(imported - listed)}"


def test_no_other_app_module_imports_channels_redis() -> None:
    offenders = []
    for path in APP.rglob("*.py"):
        if path == Path(redis_internals.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            if any(name.split(".")[0] == "channels_redis" for name in names):
                offenders.append(str(path.relative_to(APP.parent)))
    assert offenders == []
