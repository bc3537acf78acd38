"""The ASGI router: probes from memory, Django kept off the start-up path."""

from __future__ import annotations

import json

import pytest

from app.config import load
from app.process.router import Router
from tests.support import run_python


def test_importing_the_asgi_app_imports_no_django() -> None:
    code = ("import sys, app.asgi; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'channels', 'channels_redis', 'redis', 'prometheus_client')))")
    out = run_python(code)
    out.check_returncode()
    assert out.stdout.strip() == "[]"


def test_what_runs_before_listening_leaves_the_chat_stack_to_warm_up() -> None:
    # /healthz answers once the socket listens: everything imported before that delays it.
    # The frame rules, history, presence and the layers load in warm-up, off the probes' path.
    later = ("app.protocol", "app.history", "app.presence", "app.layers", "app.web",
             "app.chat.consumer", "app.chat.services", "app.process.warmup", "app.process.wiring")
    code = (f"import sys, app.asgi, app.process.server; later = {later!r}; "
            "print(sorted(m for m in sys.modules if m.startswith(later)))")
    out = run_python(code)
    out.check_returncode()
    assert out.stdout.strip() == "[]"


async def call(router: Router, path: str) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    await router({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, sent[1]["body"]


@pytest.mark.unit
async def test_healthz_is_answered_without_starting_anything() -> None:
    router = Router(load({}))
    router.defer_start = True
    status, headers, body = await call(router, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "application/json"


@pytest.mark.unit
async def test_readyz_tracks_the_lifecycle() -> None:
    router = Router(load({"APP_COLOR": "green"}))
    router.defer_start = True
    status, _, body = await call(router, "/readyz")
    assert (status, json.loads(body)) == (503, {"ready": False, "color": "green", "reason": "starting"})
    router.lifecycle.set_ready()
    status, _, body = await call(router, "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True, "color": "green"})
    router.lifecycle.begin_drain()
    status, _, body = await call(router, "/readyz")
    assert (status, json.loads(body)["reason"]) == (503, "draining")


@pytest.mark.unit
async def test_accept_traffic_says_whether_new_connections_should_come_here() -> None:
    # A balancer's health check: out while starting, draining or full; in while Redis is
    # away, an outage every process shares (taking them all out refused every client).
    router = Router(load({"APP_COLOR": "blue", "CHAT_MAX_CONNECTIONS": "2"}))
    router.defer_start = True

    async def accepting() -> tuple[int, dict]:
        status, _, body = await call(router, "/accept-traffic")
        return status, json.loads(body)

    assert await accepting() == (503, {"accepting": False, "color": "blue", "reason": "starting"})
    router.lifecycle.set_ready()
    assert await accepting() == (200, {"accepting": True, "color": "blue"})
    router.lifecycle.set_unavailable("redis unavailable: refused")
    assert await accepting() == (200, {"accepting": True, "color": "blue"})
    assert (await call(router, "/readyz"))[0] == 503
    router.admitted = 2
    assert await accepting() == (503, {"accepting": False, "color": "blue", "reason": "full"})
    router.admitted = 0
    router.lifecycle.begin_drain()
    assert await accepting() == (503, {"accepting": False, "color": "blue", "reason": "draining"})
