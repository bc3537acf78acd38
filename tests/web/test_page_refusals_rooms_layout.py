"""The chat page where a hostile review broke it, in a real browser against real servers:
a full or draining server is not "not authorised", a room switch sends nothing of the left
room anywhere, and the longest names fit a phone's screen."""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Callable

import pytest
from websockets.sync.client import connect

from app.chat.auth import mint
from tests.support import AppServer
from tests.web.test_page import TOKEN, WAIT_MS, OpenPage, Tab, expect, post_message, stored_texts
from tools.net import free_port

SECRET = secrets.token_urlsafe(32)
MakeApp = Callable[..., AppServer]
# Refused handshakes in a row before the page asks the history API whether it is about its
# token (ChatClient's refusalsBeforeCheck): the page must have asked at least twice.
CHECKS = 2
ASKED_OR_GAVE_UP = (
    f"() => window.parleyStates.filter(s => s.state === 'reconnecting').length > {3 * CHECKS}"
    " || window.parleyStates.some(s => s.state === 'refused')"
)


def open_watching_checks(open_page: OpenPage, url: str) -> tuple[Tab, list[str]]:
    """The page at ``url``, and the history API requests it makes (its refusal checks)."""
    tab = open_page("about:blank")
    checks: list[str] = []
    tab.page.on("request", lambda request: checks.append(request.url) if "/api/" in request.url else None)
    tab.page.goto(url)
    return tab, checks


def expect_retrying_not_refused(tab: Tab, checks: list[str]) -> None:
    tab.page.wait_for_function(ASKED_OR_GAVE_UP, timeout=WAIT_MS)
    states = tab.states()
    assert "refused" not in states, states
    assert "live" not in states, states  # every handshake so far was refused
    assert len(checks) >= CHECKS, checks
    expect(tab.locator("#token-form")).to_be_hidden()
    expect(tab.locator("#state")).not_to_have_text("not authorised")


@pytest.mark.parametrize("auth", ["none", "jwt"])
def test_a_full_server_is_retried_and_the_page_joins_once_a_slot_frees(
    auth: str, make_app: MakeApp, open_page: OpenPage,
) -> None:
    env = {"CHAT_MAX_CONNECTIONS": "1"}
    fragment = ""
    if auth == "jwt":
        env |= {"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET}
        fragment = f"#token={mint('erin', '*', 3600, SECRET)}"
    server = make_app(env=env)
    holder = open_page(f"{server.base}/?room=full{fragment}")
    holder.expect_live()

    # Every handshake is refused 503 too_many_connections, while the history API answers
    # 200 (to this page's token, or to anyone without auth): not a refusal of this client.
    tab, checks = open_watching_checks(open_page, f"{server.base}/?room=full{fragment}")
    expect_retrying_not_refused(tab, checks)

    holder.page.context.close()  # the slot frees: the page gets in by itself
    tab.expect_live()
    tab.send("in at last")
    tab.expect_messages(["in at last"])
    assert tab.errors == []


def test_a_draining_server_is_retried_and_the_page_joins_its_successor(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # A drain that outlasts the test: handshakes are refused 503 draining until we end it.
    env = {"SHUTDOWN_DRAIN_DELAY": "60", "SHUTDOWN_TIMEOUT": "90"}
    server = make_app(env=env, port=free_port())
    server.signal()
    server.wait_status("/readyz", 503)

    tab, checks = open_watching_checks(open_page, f"{server.base}/?room=deploy")
    expect_retrying_not_refused(tab, checks)

    server.signal(signal.SIGKILL)
    server.wait()
    server.start()  # the successor, on the same port
    tab.expect_live()
    assert tab.errors == []


def test_a_room_switch_reports_the_unsent_messages_and_sends_them_nowhere(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # One message per connection goes through; the next is refused rate_limited and waits
    # (a minute before its retry): the outbox holds messages when the user switches rooms.
    server = make_app(env={"CHAT_API_TOKEN": TOKEN, "CHAT_RATE_PER_SECOND": "0.001",
                           "CHAT_RATE_BURST": "1"})
    tab = open_page("about:blank")
    tab.page.context.add_init_script("window.PARLEY_OPTIONS.sendRetryDelay = 60000;")
    tab.page.goto(f"{server.base}/?room=alpha")
    tab.expect_live()
    tab.send("one")
    tab.expect_messages(["one"])
    tab.send("two")
    expect(tab.locator("#send-error")).to_contain_text("Rate limited", timeout=WAIT_MS)
    tab.send("secret meant for alpha only")
    unsent = ["two", "secret meant for alpha only"]
    expect(tab.locator("#outbox li .text")).to_have_text(unsent)
    expect(tab.locator("#outbox li .status")).to_have_text(["waiting to send"] * 2)

    tab.page.fill("#room-input", "beta")
    tab.page.press("#room-input", "Enter")
    expect(tab.locator("#room-title")).to_have_text("#beta")
    tab.expect_live()
    # Both are reported, by name of the room they were for, and neither is put in the input
    # (which now sends to beta).
    expect(tab.locator("#outbox li.failed .text")).to_have_text(unsent)
    expect(tab.locator("#outbox li.failed .status")).to_have_text(
        ["not sent to #alpha: you left the room"] * 2
    )
    expect(tab.locator("#message-input")).to_have_value("")
    tab.page.press("#message-input", "Enter")  # an empty input sends nothing
    tab.send("hello beta")
    tab.expect_messages(["hello beta"])
    # The report stays under beta's conversation; nothing of alpha reached any room.
    expect(tab.locator("#outbox li .text")).to_have_text(unsent)
    assert stored_texts(server, "beta") == ["hello beta"]
    assert stored_texts(server, "alpha") == ["one"]
    # The next switch clears the report: it was about alpha, and has been seen.
    tab.page.fill("#room-input", "gamma")
    tab.page.press("#room-input", "Enter")
    tab.expect_live()
    expect(tab.locator("#outbox li")).to_have_count(0)
    assert tab.errors == []


def test_joining_the_room_one_is_in_keeps_the_messages_waiting_to_send(
    make_app: MakeApp, open_page: OpenPage,
) -> None:
    # Join on the room already open (the Room field still names it) left it and rejoined:
    # the message typed while the server was away was dropped as "you left the room".
    server = make_app(env={"CHAT_API_TOKEN": TOKEN}, port=free_port())
    tab = open_page(f"{server.base}/?room=alpha")
    tab.expect_live()
    server.signal()
    assert server.wait() == 0
    expect(tab.locator("#state")).not_to_have_text("live", timeout=WAIT_MS)
    tab.send("typed while the server was away")
    expect(tab.locator("#outbox li .status")).to_have_text(["waiting to send"])

    tab.page.locator("#room-form button").click()  # the field says alpha
    expect(tab.locator("#outbox li .status")).to_have_text(["waiting to send"])
    expect(tab.locator("#outbox li.failed")).to_have_count(0)
    server.start()
    tab.expect_live()
    tab.expect_messages(["typed while the server was away"])
    expect(tab.locator("#outbox li")).to_have_count(0)
    assert stored_texts(server, "alpha") == ["typed while the server was away"]
    assert tab.errors == []


# Names of 64 characters, the most a name may have: one with no break opportunity but between
# its letters, and two that are each a single grapheme cluster (a run of Hangul leading jamo,
# which no line break may split, as wide as a phone's screen and more).
NAMES = {
    "ascii": (("Longusername" * 6)[:64], ("Longusername" * 6)[:64][::-1]),
    "one grapheme cluster": ("\u1100" * 64, "\u1101" * 64),
}


@pytest.mark.parametrize("kind", NAMES)
def test_the_longest_names_fit_a_phone_screen(kind: str, make_app: MakeApp, open_page: OpenPage) -> None:
    room = ("Longroomname" * 6)[:64]  # 64 characters, the most a room may have, no break
    user, other = NAMES[kind]
    server = make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET, "CHAT_API_TOKEN": TOKEN})
    post_message(server.base, room, "from someone with a long name", user=other)
    tab = open_page("about:blank")
    tab.page.context.add_init_script("window.PARLEY_OPTIONS.typingShown = 600000;")  # stays shown
    tab.page.goto(f"{server.base}/?room={room}#token={mint(user, '*', 3600, SECRET)}")
    tab.page.set_viewport_size({"width": 390, "height": 844})
    tab.expect_live()
    expect(tab.locator("#who")).to_have_text(f"you are {user}")
    expect(tab.locator("#online")).to_have_text("1 online", timeout=WAIT_MS)
    tab.send("and a reply")
    tab.expect_messages(["from someone with a long name", "and a reply"])
    with connect(server.ws_url(room, token=mint(other, "*", 3600, SECRET))) as typist:
        expect(tab.locator("#online")).to_have_text("2 online", timeout=WAIT_MS)
        typist.send(json.dumps({"type": "typing"}))
        expect(tab.locator("#typing")).to_have_text(f"{other} is typing…", timeout=WAIT_MS)
        tab.locator("#online").click()
        expect(tab.page.locator("#members li", has_text="(you)")).to_have_text([f"{user} (you)"])
        assert_within_the_screen(tab)


def assert_within_the_screen(tab: Tab) -> None:
    width = tab.page.evaluate("window.innerWidth")
    assert width == 390
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= width
    selectors = ["#room-title", "#who", "#online", "#members", "#state", "#typing",
                 "#messages li.message .user", "#messages li.message time"]
    for selector in selectors:
        for box in tab.locator(selector).evaluate_all(
            "items => items.map(el => el.getBoundingClientRect().toJSON())"
        ):
            assert 0 <= box["left"] and box["right"] <= width, (selector, box)
    assert tab.errors == []


def test_a_token_for_other_rooms_says_so(make_app: MakeApp, open_page: OpenPage) -> None:
    # The refusal check reads the history API's answer to the same token: 403 room_not_allowed.
    server = make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": SECRET})
    tab = open_page(f"{server.base}/?room=private#token={mint('frank', ['design'], 3600, SECRET)}")
    expect(tab.locator("#state")).to_have_text("not authorised", timeout=WAIT_MS)
    expect(tab.locator("#token-note")).to_have_text(
        "Your sign-in token does not grant this room. Paste one that does, or join another room."
    )
    tab.page.fill("#room-input", "design")
    tab.page.press("#room-input", "Enter")
    tab.expect_live()
    expect(tab.locator("#token-form")).to_be_hidden()
    assert tab.errors == []


def test_the_page_refuses_rooms_named_by_url_dot_segments(make_app: MakeApp, open_page: OpenPage) -> None:
    # The browser resolves /ws/chat/../ to /ws/: the page would connect somewhere else.
    server = make_app()
    tab = open_page(f"{server.base}/?room=alpha")
    tab.expect_live()
    for name in (".", ".."):
        tab.page.fill("#room-input", name)
        tab.page.press("#room-input", "Enter")
        assert tab.page.eval_on_selector("#room-input", "e => e.validity.valid") is False
        assert tab.page.evaluate(f"window.Parley.ROOM_PATTERN.test({json.dumps(name)})") is False
    tab.page.fill("#room-input", "...")
    tab.page.press("#room-input", "Enter")
    expect(tab.locator("#room-title")).to_have_text("#...")
    tab.expect_live()
    assert tab.errors == []
