// Parley's chat page: draws a `ChatClient` (client.js, loaded first) and what it reports.
// Plain JavaScript, no dependencies, no build step. docs/CLIENT.md explains the choices.
"use strict";

(() => {
  const { ChatClient, DEFAULTS, ROOM_PATTERN, tokenClaims } = window.Parley;

  const ERROR_TEXT = {
    message_too_long: "Too long",
    rate_limited: "Rate limited, sending too fast; retrying shortly",
    unavailable: "Chat is unavailable right now; retrying shortly",
    empty_message: "Empty message",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    online: $("online"),
    members: $("members"),
    typing: $("typing"),
    roomForm: $("room-form"),
    roomInput: $("room-input"),
    roomTitle: $("room-title"),
    who: $("who"),
    state: $("state"),
    retry: $("retry"),
    scroller: $("scroller"),
    messages: $("messages"),
    outbox: $("outbox"),
    sendForm: $("send-form"),
    input: $("message-input"),
    error: $("send-error"),
    tokenForm: $("token-form"),
    tokenInput: $("token-input"),
    tokenNote: $("token-note"),
  };
  const TOKEN_KEY = "parley.token"; // sessionStorage: this tab only, gone with it
  const ANON_KEY = "parley.anon"; // sessionStorage too: one anonymous name per tab
  const ANON_PATTERN = /^[A-Za-z0-9_-]{22,128}$/; // what the server takes as ?anon=
  const options = { ...DEFAULTS, ...(window.PARLEY_OPTIONS || {}) };
  options.token = takeToken() || options.token;
  options.anon = anonSecret();
  let client = null;
  let countdown = 0;

  /**
   * The token given on the page URL (#token=, or ?token=) or kept for this tab. It is taken
   * off the address at once (history.replaceState), so it is in no history entry, bookmark
   * or copied link; #token= is never even sent to the server, so it is in no access log.
   */
  function takeToken() {
    const url = new URL(window.location.href);
    const fragment = new URLSearchParams(url.hash.slice(1));
    const given = fragment.get("token") || url.searchParams.get("token");
    if (given) {
      fragment.delete("token");
      url.searchParams.delete("token");
      url.hash = fragment.toString();
      window.history.replaceState(null, "", url);
      keepToken(given);
      return given;
    }
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null; // storage disabled: the token lives as long as the page
    }
  }

  function keepToken(token) {
    try {
      window.sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {
      // storage disabled: kept in memory only
    }
  }

  /**
   * This tab's anonymous secret: 128 random bits (base64url), drawn once and kept for the tab,
   * so a reload, a reconnect or a deploy keeps the name the server derives from it. It is a
   * secret, not a name: whoever has it can speak under this tab's name, so it stays in this
   * tab's sessionStorage and goes only to the chat server.
   */
  function anonSecret() {
    try {
      const kept = window.sessionStorage.getItem(ANON_KEY);
      if (kept !== null && ANON_PATTERN.test(kept)) return kept;
    } catch (_) {
      // storage disabled: a secret for as long as the page lives
    }
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const secret = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    try {
      window.sessionStorage.setItem(ANON_KEY, secret);
    } catch (_) {
      // kept in memory only
    }
    return secret;
  }

  const REFUSED_TEXT = {
    token: "The server refused your sign-in token. Paste a valid one to join.",
    no_token: "This chat needs a sign-in token. Paste one to join.",
    room_not_allowed: "Your sign-in token does not grant this room. Paste one that does, or join another room.",
    wrong_audience: "Your sign-in token was issued for another service. Paste one issued for this chat.",
    token_not_yet_valid: "Your sign-in token is not valid yet: its issuer's clock may be ahead. Paste another, or try again later.",
  };

  function showTokenForm(state, detail) {
    const asking = state === "refused" || state === "expired";
    ui.tokenForm.hidden = !asking;
    if (state === "refused") {
      ui.tokenNote.textContent =
        REFUSED_TEXT[detail.code] || REFUSED_TEXT[detail.reason] || REFUSED_TEXT.token;
    }
    if (state === "expired") ui.tokenNote.textContent = "Your sign-in token has expired. Paste a fresh one to rejoin.";
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(ts) {
    const d = new Date(ts);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** Keep the view pinned to the newest message unless the reader scrolled up. */
  function appending(draw) {
    const el = ui.scroller;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    draw();
    if (atBottom) el.scrollTop = el.scrollHeight;
  }

  /**
   * A user name as text in a <bdi>: bidi controls in a name (U+202E and the like) stay
   * inside it. Unisolated, "\u202Eevil" reversed whatever followed it on the line: the
   * message's time, " is typing…", " (you)", so a name could dress up as other text.
   */
  function nameNode(user) {
    const name = document.createElement("bdi");
    name.className = "user";
    name.textContent = user; // text, never HTML
    return name;
  }

  function row(className, user, text, meta) {
    const li = document.createElement("li");
    li.className = className;
    const head = document.createElement("div");
    head.className = "meta";
    head.append(nameNode(user), meta);
    const body = document.createElement("p");
    body.className = "text";
    body.dir = "auto"; // a Hebrew or Arabic message reads right to left, a Latin one left to right
    body.textContent = text; // text, never HTML
    li.append(head, body);
    return li;
  }

  function showMessage(frame) {
    const time = document.createElement("time");
    time.dateTime = new Date(frame.ts).toISOString();
    time.textContent = clock(frame.ts);
    const mine = client !== null && client.isMine(frame);
    const className = mine ? "message mine" : "message";
    const li = row(className, String(frame.user), String(frame.message), time);
    li.dataset.id = String(frame.id);
    appending(() => {
      ui.messages.append(li);
      if (frame.client_id) outboxRow(frame.client_id)?.remove();
    });
  }

  function showNotice(text) {
    const li = document.createElement("li");
    li.className = "notice";
    li.textContent = text;
    appending(() => ui.messages.append(li));
  }

  function outboxRow(clientId) {
    return Array.from(ui.outbox.children).find((li) => li.dataset.clientId === clientId);
  }

  const OUTBOX_LABEL = { queued: "waiting to send", sending: "sending…", sent: "sent" };

  function showOutbox(item) {
    let li = outboxRow(item.clientId);
    if (item.status === "sent" && item.id <= client.lastId) {
      li?.remove(); // its message is already on screen
      return;
    }
    const label = document.createElement("span");
    label.className = "status";
    label.textContent = item.status === "failed" ? item.error : OUTBOX_LABEL[item.status];
    const fresh = row(`pending ${item.status}`, "you", item.text, label);
    fresh.dataset.clientId = item.clientId;
    appending(() => (li ? li.replaceWith(fresh) : ui.outbox.append(fresh)));
    // A refused message comes back to be edited, but never one of a room we left: the input
    // now sends to another room.
    if (item.status === "failed" && !client.left && ui.input.value === "") {
      ui.input.value = item.text;
      fitInput();
    }
  }

  function showError(code, detail) {
    if (code === null) {
      ui.error.textContent = "";
      return;
    }
    const text = ERROR_TEXT[code] || "Not sent";
    ui.error.textContent = detail ? `${text}: ${detail}` : text;
  }

  function showState(state, detail) {
    clearInterval(countdown);
    ui.state.dataset.state = state;
    document.documentElement.dataset.state = state;
    const waiting = ["reconnecting", "offline", "refused", "expired"].includes(state);
    ui.retry.hidden = !(client && !client.left && waiting);
    if (state === "reconnecting") {
      const until = performance.now() + detail.delay;
      const tick = () => {
        const seconds = Math.max(1, Math.ceil((until - performance.now()) / 1000));
        ui.state.textContent = `reconnecting in ${seconds} s`;
      };
      tick();
      countdown = setInterval(tick, 250);
    } else {
      ui.state.textContent = {
        connecting: "connecting…",
        live: "live",
        offline: "offline",
        refused: "not authorised",
        expired: "sign-in expired",
      }[state];
    }
    showTokenForm(state, detail);
    // For embedders and tests: every transition, including ones too brief to see.
    document.dispatchEvent(
      new CustomEvent("parley:state", { detail: { state, text: ui.state.textContent, ...detail } }),
    );
  }

  // -- presence on the page ------------------------------------------------------------

  const MEMBERS_SHOWN = 100;
  const typists = new Map(); // user -> timer that forgets them

  function showPresence({ count, members }) {
    ui.online.textContent = `${count} online`;
    const items = Array.from(members).slice(0, MEMBERS_SHOWN).map((user) => {
      const li = document.createElement("li");
      li.append(nameNode(user));
      if (user === client?.user) li.append(" (you)");
      return li;
    });
    ui.members.replaceChildren(...items);
  }

  function showTyping() {
    const names = Array.from(typists.keys());
    if (names.length === 1) ui.typing.replaceChildren(nameNode(names[0]), " is typing…");
    else if (names.length === 2) {
      ui.typing.replaceChildren(nameNode(names[0]), " and ", nameNode(names[1]), " are typing…");
    } else ui.typing.textContent = names.length > 2 ? "several people are typing…" : "";
  }

  function typingStopped(user) {
    clearTimeout(typists.get(user));
    if (typists.delete(user)) showTyping();
  }

  function someoneTyping(user) {
    clearTimeout(typists.get(user));
    typists.set(user, setTimeout(() => typingStopped(user), options.typingShown));
    showTyping();
  }

  function clearPresence() {
    for (const user of Array.from(typists.keys())) typingStopped(user);
    ui.online.textContent = "";
    ui.members.replaceChildren();
  }

  function join(room) {
    if (!ROOM_PATTERN.test(room)) {
      ui.roomInput.setCustomValidity("1–64 letters, digits, _ . - (not . or ..)");
      ui.roomInput.reportValidity();
      return;
    }
    ui.roomInput.setCustomValidity("");
    if (client !== null && !client.left && client.room === room) {
      // Already here: leaving would drop the messages waiting to send as "you left the room".
      // Join is then a nudge to reconnect now if the page is waiting to.
      ui.roomInput.value = room;
      client.retryNow();
      ui.input.focus();
      return;
    }
    // The left room's unsent messages are reported, not carried over: their rows ("not sent
    // to #old: you left the room") stay under the new room's conversation until the next
    // switch, so the user sees what did not go out (and can copy it), and nothing is sent.
    const unsent = client !== null ? client.leave() : [];
    const reported = unsent.map((item) => outboxRow(item.clientId)).filter((li) => li !== undefined);
    ui.messages.replaceChildren();
    ui.outbox.replaceChildren(...reported);
    showError(null);
    ui.roomInput.value = room;
    ui.roomTitle.textContent = `#${room}`;
    ui.who.textContent = "";
    clearPresence();
    document.title = `#${room} · Parley`;
    const url = new URL(window.location.href);
    url.searchParams.set("room", room);
    window.history.replaceState(null, "", url);
    client = new ChatClient(room, { ...options, token: options.token }, {
      onState: showState,
      onReady: (frame) => {
        ui.who.replaceChildren("you are ", nameNode(String(frame.user)));
      },
      onMessage: (frame) => {
        typingStopped(String(frame.user));
        showMessage(frame);
      },
      onPresence: showPresence,
      onTyping: someoneTyping,
      onGap: (frame) => showNotice(`messages ${frame.from}–${frame.to} are no longer available`),
      // Only over messages shown: an empty room's state can lapse, and nothing started over.
      onReset: () => {
        if (ui.messages.querySelector(".message")) showNotice("the room's history started over; messages below are from its new start");
      },
      onOutbox: showOutbox,
      onError: showError,
      onToken: (token) => {
        keepToken(token);
        options.token = token; // the next room joined uses it too
      },
      onExpiring: () => showNotice("Your sign-in token expires soon: the server will then close this connection, and rejoining will need a fresh token."),
    });
    client.start();
    ui.input.focus();
  }

  function submit() {
    const text = ui.input.value;
    if (text.trim() === "") return;
    if (client === null) {
      showError("no_room", "join a room first");
      return;
    }
    // Checked here so a message too long stays in the input to be shortened; by the limit the
    // server gave (code points, as it counts), else the default, and the server checks anyway.
    if ([...text].length > client.maxChars) {
      showError("message_too_long", `at most ${client.maxChars} characters`);
      return;
    }
    showError(null);
    client.send(text);
    ui.input.value = "";
    fitInput();
  }

  /** Grow the message box with its text, up to the CSS max-height. */
  function fitInput() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${ui.input.scrollHeight + 2}px`;
  }

  ui.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    join(ui.roomInput.value.trim());
  });
  ui.sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  ui.input.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition is not a send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  ui.input.addEventListener("input", () => {
    fitInput();
    if (client !== null && ui.input.value.trim() !== "") client.typing();
  });
  ui.retry.addEventListener("click", () => client?.retryNow());
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (token === "") return;
    ui.tokenInput.value = "";
    keepToken(token);
    options.token = token;
    client?.authorize(token);
  });

  join(new URLSearchParams(window.location.search).get("room") || "lobby");
})();
