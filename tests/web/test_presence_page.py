"""The page shows who is online and who is typing: two real browser tabs, one real server."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from app.chat.auth import mint
from tests.support import AppServer, RedisServer, free_port
from tests.web.test_page import OpenPage, Tab

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WAIT_MS = 15_000
RLO = "\u202e"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: `apt-get install chromium`")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_tab(browser: Any) -> Iterator[Callable[[str], Any]]:
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(url: str) -> Any:
        context = browser.new_context(viewport={"width": 960, "height": 640})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []


def test_the_page_shows_the_online_count_and_who_is_typing(
    make_app: Callable[..., AppServer], open_tab: Callable[[str], Any],
) -> None:
    server = make_app(env={"CHAT_PRESENCE_GRACE": "1"})
    alice = open_tab(f"{server.base}/?room=tea")
    expect(alice.locator("#online")).to_have_text("1 online", timeout=WAIT_MS)
    bob = open_tab(f"{server.base}/?room=tea")
    for page in (alice, bob):
        expect(page.locator("#online")).to_have_text("2 online", timeout=WAIT_MS)
    bob_name = bob.evaluate("document.getElementById('who').textContent").removeprefix("you are ")
    alice.locator("#online").click()
    expect(alice.locator("#members li")).to_have_count(2)
    expect(alice.locator("#members li", has_text=bob_name)).to_have_count(1)

    bob.locator("#message-input").press_sequentially("hel")
    expect(alice.locator("#typing")).to_have_text(f"{bob_name} is typing…", timeout=WAIT_MS)
    expect(bob.locator("#typing")).to_have_text("")  # never told about oneself
    bob.locator("#message-input").press("Enter")
    expect(alice.locator("#messages li.message .text")).to_have_text(["hel"], timeout=WAIT_MS)
    expect(alice.locator("#typing")).to_have_text("")  # their message ends "typing"

    bob.context.close()
    expect(alice.locator("#online")).to_have_text("1 online", timeout=WAIT_MS)
    expect(alice.locator("#members li")).to_have_count(1)


# Every text the presence summary shows from now on ("2 online", ...), however briefly.
WATCH_ONLINE = """() => {
  const online = document.getElementById("online");
  window.onlineShown = [];
  new MutationObserver(() => window.onlineShown.push(online.textContent))
    .observe(online, { childList: true, characterData: true, subtree: true });
}"""


def my_name(tab: Tab) -> str:
    return str(tab.locator("#who").text_content()).removeprefix("you are ")


def test_anonymous_pages_keep_their_names_across_a_restart(
    make_app: Callable[..., AppServer], redis_server: RedisServer, open_page: OpenPage,
) -> None:
    # Without JWT each connection was a new random user: a deploy (1012, reconnect) doubled
    # the "online" count for the whole grace, each page listed twice. A tab sends its secret
    # (?anon=) on every connect, and the server names it by it: the same member throughout.
    env = {"REDIS_URL": redis_server.url, "CHAT_PRESENCE_GRACE": "30"}  # presence outlives the process
    server = make_app(env=env, port=free_port())
    tabs = [open_page(f"{server.base}/?room=tea") for _ in range(2)]
    for tab in tabs:
        tab.expect_live()
        expect(tab.locator("#online")).to_have_text("2 online", timeout=WAIT_MS)
    names = [my_name(tab) for tab in tabs]
    assert names[0] != names[1] and all(name.startswith("anon-") for name in names)
    for tab in tabs:
        tab.page.evaluate(WATCH_ONLINE)

    server.signal()
    assert server.wait() == 0
    for tab in tabs:
        expect(tab.locator("#state")).not_to_have_text("live", timeout=WAIT_MS)
    server.start()
    for tab in tabs:
        tab.expect_live()
        expect(tab.locator("#online")).to_have_text("2 online", timeout=WAIT_MS)
    assert [my_name(tab) for tab in tabs] == names
    for tab in tabs:
        # Never more than the two of them, not even for a moment.
        assert set(tab.page.evaluate("window.onlineShown")) == {"2 online"}
        tab.locator("#online").click()
        expect(tab.locator("#members li")).to_have_count(2)
        assert sorted(tab.locator("#members li bdi").all_text_contents()) == sorted(names)
        assert len(tab.socket_urls()) >= 2  # reconnected, with one secret throughout
        assert tab.errors == []


# Where each character of ``el``'s text is drawn, left edge in px, in text order.
CHARACTER_LEFTS = """el => {
  const lefts = [];
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.data.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      lefts.push([node.data[i], range.getBoundingClientRect().left]);
    }
  }
  return lefts;
}"""


def drawn_left_to_right(element: Any, text: str) -> bool:
    """Are the characters of ``text`` (within the element's text) drawn in their order?"""
    lefts = element.evaluate(CHARACTER_LEFTS)
    chars = "".join(ch for ch, _ in lefts)
    start = chars.index(text)
    xs = [x for _, x in lefts[start:start + len(text)]]
    return xs == sorted(xs) and len(set(xs)) == len(xs)


def test_bidi_controls_in_a_name_stay_inside_the_name(
    make_app: Callable[..., AppServer], open_tab: Callable[[str], Any],
) -> None:
    # A signed name may hold U+202E (right-to-left override): unisolated, it reversed the
    # rest of its line, so "‮evil" could make " is typing…" or " (you)" read backwards.
    secret = secrets.token_urlsafe(32)
    server = make_app(env={"CHAT_AUTH": "jwt", "CHAT_JWT_SECRET": secret, "CHAT_PRESENCE_GRACE": "1"})
    page = open_tab(f"{server.base}/?room=tea#token={mint(RLO + 'me', ['tea'], 3600, secret)}")
    with connect(server.ws_url("tea", token=mint(RLO + "evil", ["tea"], 3600, secret))) as other:
        expect(page.locator("#online")).to_have_text("2 online", timeout=WAIT_MS)
        other.send(json.dumps({"type": "typing"}))
        expect(page.locator("#typing")).to_contain_text("is typing", timeout=WAIT_MS)
        assert drawn_left_to_right(page.locator("#typing"), " is typing…")
    page.locator("#online").click()
    mine = page.locator("#members li", has_text="(you)")
    expect(mine).to_have_count(1, timeout=WAIT_MS)
    assert drawn_left_to_right(mine, " (you)")
    assert drawn_left_to_right(page.locator("#who"), "you are ")


# A ChatClient of the page's own client.js, fed frames one after another by ``feed``, which
# returns what it shows after each; ``list`` makes a presence frame's members.
FEED = '''  const client = new window.Parley.ChatClient("probe", {}, {});
  const feed = (frame) => {
    client.receive(JSON.stringify({ room: "probe", ...frame }));
    return [client.presence.count, Array.from(client.presence.members).sort()];
  };
  const list = (...users) => users.map((user) => ({ user }));
'''


# Presence frames in an order the server can send them; what the client shows after each.
PRESENCE_SEQUENCE = "() => {\n" + FEED + """  const shown = [
    feed({ type: "presence", count: 2, members: list("a", "b"), version: 10 }),
    feed({ type: "join", user: "c", count: 3, version: 12 }),
    // "leave b" (13) was lost on its way: the server sends the whole list again.
    feed({ type: "presence", count: 2, members: list("a", "c"), version: 14 }),
    feed({ type: "join", user: "b", count: 2, version: 9 }),  // held up on its way: in the list
    feed({ type: "presence", count: 4, members: list("a", "b", "c", "d"), version: 11 }),  // stale
    feed({ type: "join", user: "d", count: 3, version: 15 }),
  ];
  client.leave();
  return shown;
}"""


# Changes of one user arriving the other way round (two processes announce them); and a
# reconnect to a server whose versions started over.
PRESENCE_REORDERED = "() => {\n" + FEED + """  const shown = [
    feed({ type: "presence", count: 2, members: list("me", "dave"), version: 10 }),
    // dave left (11, held for its process's next round) and came back (12, at once).
    feed({ type: "join", user: "dave", count: 2, version: 12 }),
    feed({ type: "leave", user: "dave", count: 1, version: 11 }),
    // erin came (13) and left after the grace (14): the leave arrives first.
    feed({ type: "leave", user: "erin", count: 2, version: 14 }),
    feed({ type: "join", user: "erin", count: 3, version: 13 }),
    feed({ type: "presence_diff", count: 2, joined: list("frank"), left: list("dave"), version: 16 }),
    // Older news of both, in a diff: neither changes.
    feed({ type: "presence_diff", count: 2, joined: list("dave"), left: list("frank"), version: 15 }),
    // A reconnect to an in-memory server that restarted: versions start again from its snapshot.
    feed({ type: "ready", last_id: 0, user: "me", epoch: "e2" }),
    feed({ type: "presence", count: 1, members: list("me"), version: 2 }),
    feed({ type: "join", user: "dave", count: 2, version: 3 }),
  ];
  client.leave();
  return shown;
}"""


def test_a_users_older_change_arriving_late_changes_nothing(
    make_app: Callable[..., AppServer], open_tab: Callable[[str], Any],
) -> None:
    server = make_app()
    page = open_tab(f"{server.base}/?room=tea")
    assert page.evaluate(PRESENCE_REORDERED) == [
        [2, ["dave", "me"]],
        [2, ["dave", "me"]],
        [2, ["dave", "me"]],  # the late leave: dave is still here
        [2, ["dave", "me"]],
        [2, ["dave", "me"]],  # the late join: erin has gone
        [2, ["frank", "me"]],
        [2, ["frank", "me"]],
        [2, ["frank", "me"]],
        [1, ["me"]],
        [2, ["dave", "me"]],
    ]


def test_a_presence_frame_after_ready_replaces_the_list_and_the_list_never_goes_back(
    make_app: Callable[..., AppServer], open_tab: Callable[[str], Any],
) -> None:
    # PROTOCOL.md: a `presence` frame may come again when announcements to the client's
    # process were lost; it replaces the list, and nothing at or below its version changes it.
    server = make_app()
    page = open_tab(f"{server.base}/?room=tea")
    assert page.evaluate(PRESENCE_SEQUENCE) == [
        [2, ["a", "b"]],
        [3, ["a", "b", "c"]],
        [2, ["a", "c"]],
        [2, ["a", "c"]],
        [2, ["a", "c"]],
        [3, ["a", "c", "d"]],
    ]


# A round that carries a leave stepped before the user's return through another process: the
# round's `version` (for `count`) is newer than the return, the leave's own `changed` older.
PRESENCE_CHANGED = "() => {\n" + FEED + """  const shown = [
    feed({ type: "presence", count: 2, members: list("me", "zoe"), version: 10 }),
    // zoe left (11, waiting in process A's round) and came back through B (12, at once).
    feed({ type: "join", user: "zoe", count: 3, version: 12, changed: 12 }),
    // A's round goes out at 13: zoe's leave is of step 11, the count of 13 (yan joined there).
    feed({ type: "presence_diff", count: 3, joined: [{ user: "yan", changed: 13 }],
           left: [{ user: "zoe", changed: 11 }], version: 13 }),
    // A snapshot at 14, then a leave of step 13 whose frame is newer (15): the snapshot has it.
    feed({ type: "presence", count: 2, members: list("me", "zoe"), version: 14 }),
    feed({ type: "leave", user: "yan", count: 2, version: 15, changed: 13 }),
  ];
  client.leave();
  return shown;
}"""


def test_a_change_is_dated_by_its_own_step_not_by_its_rounds_version(
    make_app: Callable[..., AppServer], open_tab: Callable[[str], Any],
) -> None:
    # A hostile probe: dated by the round's version, zoe's old leave removed her for good.
    server = make_app()
    page = open_tab(f"{server.base}/?room=tea")
    assert page.evaluate(PRESENCE_CHANGED) == [
        [2, ["me", "zoe"]],
        [3, ["me", "zoe"]],
        [3, ["me", "yan", "zoe"]],
        [2, ["me", "zoe"]],
        [2, ["me", "zoe"]],
    ]
