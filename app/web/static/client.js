// Parley reference client: plain JavaScript, no dependencies, no build step.
//
// `ChatClient` speaks the protocol (docs/PROTOCOL.md) and knows nothing about the page:
// connect, resume with ?since=, reconnect with backoff, resend unacknowledged messages with
// their client_id. chat.js draws the page with it. docs/CLIENT.md explains the choices.
// Copy this file to speak the protocol from another page: it defines `window.Parley`.
"use strict";

(() => {
  const DEFAULTS = Object.freeze({
    backoffBase: 500, // ms: retry window after the first failure; doubles per failure
    backoffCap: 20000, // ms: the window never grows past this
    restartJitter: 1000, // ms: window after close 1012 (deploy): prompt, but spread out
    connectTimeout: 10000, // ms: from new WebSocket() to `ready`, else retry
    ackTimeout: 10000, // ms: a send without ack or error means the socket is dead
    sendRetryDelay: 1000, // ms: before resending after `rate_limited` or `unavailable`
    historyWindow: 50, // messages shown on first join (?last=)
    maxChars: 4000, // until `ready` says the server's CHAT_MAX_MESSAGE_CHARS (older servers do not)
    refusalsBeforeCheck: 3, // handshakes refused in a row before asking whether it's auth
    token: null, // a JWT for servers with CHAT_AUTH=jwt (the page takes it from #token=)
    anon: null, // this tab's secret, sent as ?anon=: without JWT, the server names us by it
    refreshToken: null, // optional async () => fresh JWT, called when the server refuses the token as expired
    expiryNotice: 60000, // ms before the token's exp (by this page's clock, a hint) to say it expires soon
    typingInterval: 2000, // ms: at most one typing notice per this (the server relays one per 2 s)
    typingShown: 3000, // ms: how long "… is typing" stays without a new notice
  });
  // Not "." or "..": URL dot segments, which the browser resolves away (/ws/chat/../ is /ws/).
  const ROOM_PATTERN = /^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$/;
  const CLOSE_RESTART = 1012;
  const CLOSE_TOO_BIG = 1009;
  const CLOSE_TOKEN_EXPIRED = 4001; // the server closes a socket at its token's exp
  // Refusals worth retrying with the same client_id; every other error drops the message.
  const RETRYABLE = new Set(["rate_limited", "unavailable"]);

  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** A JWT's claims (not verified: only the server can), or null if it is not one. */
  function tokenClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
      return claims !== null && typeof claims === "object" ? claims : null;
    } catch (_) {
      return null;
    }
  }

  /** ws: or wss: URL of a room, relative to the page so a path prefix (proxy) still works. */
  function roomUrl(room, query) {
    const url = new URL(`ws/chat/${encodeURIComponent(room)}/`, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.search = new URLSearchParams(query).toString();
    url.hash = "";
    return url.toString();
  }

  /**
   * One room's connection. States: "connecting" → "live" → "reconnecting" → "connecting" …;
   * "offline" when the browser has no network or after leave(); "refused" when handshakes
   * keep failing and the history API refuses this client's token, or its lack of one (not
   * authorised), and "expired" when the server refused the token as expired and no
   * refreshToken hook gave another: both wait for authorize(token). A full, draining or
   * starting server is none of these: its refusals are failed connects, retried with backoff.
   *
   * Callbacks (all optional): onState(state, {delay, window, code}), onReady(frame),
   * onMessage(frame), onGap(frame), onReset(frame), onOutbox(item), onError(code, detail),
   * onPresence({count, members}), onTyping(user). An outbox item is
   * {clientId, text, status: "queued" | "sending" | "sent" | "failed", id?, error?}.
   */
  class ChatClient {
    constructor(room, options, callbacks) {
      this.room = room;
      this.options = { ...DEFAULTS, ...options };
      this.on = callbacks;
      this.state = "offline";
      this.lastId = 0; // newest message id shown: resume point and duplicate filter
      this.epoch = null; // the room's epoch lastId counts in (from `ready` / `reset`)
      this.lastTs = null; // `ts` of the message shown as lastId: which message that id named
      this.resuming = false; // true once the room was joined: reconnects use ?since=
      this.attempt = 0; // failures since the last `ready`: the backoff exponent
      this.outbox = []; // unacknowledged sends, oldest first
      this.inflight = null; // the one outbox item awaiting its ack (keeps order; see CLIENT.md)
      this.mine = new Set(); // client_ids sent from this page
      this.user = null;
      this.maxChars = this.options.maxChars; // longest message, in code points: the server's word
      this.names = new Set(); // every name the server gave us here (`ready.user`)
      // Who is here: `version` is the highest seen on this connection (the count is its),
      // `shown` the version of the last `presence` snapshot (frames at or below it are in it),
      // `changed` the version of the last join or leave applied per user since that snapshot.
      this.presence = { count: 0, members: new Set(), version: -1, shown: -1, changed: new Map() };
      this.typedAt = -Infinity; // when our last typing notice went out
      this.ws = null;
      this.timers = { reconnect: 0, connect: 0, ack: 0, resend: 0, expiry: 0 };
      this.left = false;
      this.token = this.options.token || null;
      this.refusals = 0; // handshakes closed before they opened, in a row
      this.renewal = null; // the pending ask of the refreshToken hook; connect() cancels it
      this.onOnline = () => {
        if (this.state === "offline" && !this.left) this.connect();
      };
      window.addEventListener("online", this.onOnline);
    }

    start() {
      this.connect();
    }

    /** Queue a message; it goes out as soon as the room is live, and again after reconnects. */
    send(text) {
      const item = { clientId: newClientId(), text, status: "queued" };
      this.outbox.push(item);
      this.mine.add(item.clientId);
      this.emit("onOutbox", item);
      this.pump();
      return item;
    }

    /**
     * A deliberate close: no reconnect. The room's unsent messages are reported as failed
     * (onOutbox) and returned; they are never sent again, here or in any other room. The
     * one in flight, if any, may have been stored before its ack: it says so.
     */
    leave() {
      this.left = true;
      window.removeEventListener("online", this.onOnline);
      this.detach(1000, "leaving");
      this.clearTimers();
      const unsent = this.outbox;
      const inflight = this.inflight;
      this.outbox = [];
      this.inflight = null;
      for (const item of unsent) {
        this.fail(item, item === inflight
          ? `maybe not sent to #${this.room}: you left before the server confirmed it`
          : `not sent to #${this.room}: you left the room`);
      }
      this.setState("offline");
      return unsent;
    }

    /** Skip the rest of a reconnect wait (the "Retry now" button). */
    retryNow() {
      const waiting = ["reconnecting", "offline", "refused", "expired"];
      if (!this.left && waiting.includes(this.state)) {
        this.refusals = 0;
        this.connect();
      }
    }

    /** Use ``token`` from now on (a fresh or a first one) and connect with it. */
    authorize(token) {
      this.token = token || null;
      this.refusals = 0;
      if (!this.left) this.connect();
    }

    /**
     * Seconds until the token expires by this page's clock (negative: expired); null without a
     * token or ``exp``. A hint only: the page's clock can be hours off the server's, so this
     * never decides that a token is expired; the server does (close 4001, or expired_token).
     */
    tokenTtl() {
      const claims = this.token ? tokenClaims(this.token) : null;
      if (claims === null || typeof claims.exp !== "number") return null;
      return claims.exp - Date.now() / 1000;
    }

    // -- connection ---------------------------------------------------------------------

    connect() {
      this.clearTimers();
      this.detach(4000, "reconnecting");
      this.renewal = null; // a hook still being asked answers for a connection that is gone
      const query = this.resuming || this.lastId > 0
        ? { since: String(this.lastId) }
        : { last: String(this.options.historyWindow) };
      // Ids count within an epoch: resuming in another one gets a `reset`, never a skip.
      if (query.since !== undefined && this.epoch !== null) query.epoch = this.epoch;
      // And which message that id named: a store that went back in time and gave the id to
      // another message answers with a `reset` too, not with what follows the other one.
      if (query.since !== undefined && this.lastTs !== null) query.ts = String(this.lastTs);
      if (this.token) query.token = this.token;
      // Anonymous: the same secret on every connect is the same name, so a reconnect or a
      // deploy is not a new member (the server ignores it with JWT, where the token names us).
      if (this.options.anon) query.anon = this.options.anon;
      const ws = new WebSocket(roomUrl(this.room, query));
      this.ws = ws;
      let opened = false;
      this.setState("connecting");
      this.timers.connect = setTimeout(() => this.lost(0), this.options.connectTimeout);
      ws.onopen = () => {
        opened = true;
      };
      ws.onmessage = (event) => {
        if (ws === this.ws) this.receive(event.data);
      };
      // A refused handshake (HTTP 403 for a bad token, 503 while a server drains or starts)
      // also ends here, as 1006: the browser hides the status, so refusals are counted.
      ws.onclose = (event) => {
        if (ws !== this.ws) return;
        if (event.code === CLOSE_TOKEN_EXPIRED) {
          this.renew(event.code); // the server says the token expired: that is what counts
          return;
        }
        this.refusals = opened ? 0 : this.refusals + 1;
        // A token that looks expired by our clock (a hint) is worth asking about at once, not
        // after several refusals: only the server's answer decides.
        const ttl = this.tokenTtl();
        const looksExpired = !opened && ttl !== null && ttl <= 0;
        if (this.refusals >= this.options.refusalsBeforeCheck || looksExpired) {
          this.checkRefusal(event.code);
        } else {
          this.lost(event.code);
        }
      };
    }

    /**
     * Handshakes keep failing before they open, and the browser hides why: a bad token or
     * origin (403) looks the same as a full, draining or starting server (503). Ask the
     * history API, with the same token, whether this client may read the room: 401 or 403
     * there means the service refuses our token (or our lack of one), so say so and stop
     * instead of spinning. Any other answer (200: the token is fine, or none is needed;
     * 5xx; no answer at all) means the refusal is not about us: retry with backoff.
     */
    async checkRefusal(code) {
      this.detach(4000, "refused");
      this.clearTimers();
      let refusal = null; // the history API's refusal code, when it refuses our token
      try {
        const url = new URL(`api/rooms/${encodeURIComponent(this.room)}/messages?limit=1`, window.location.href);
        const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
        const response = await fetch(url, { cache: "no-store", credentials: "omit", headers });
        if (response.status === 401 || response.status === 403) {
          const body = await response.json().catch(() => null);
          refusal = body !== null && typeof body.code === "string" ? body.code : "refused";
        }
      } catch (_) {
        refusal = null; // no answer: the server is down, retry as usual
      }
      if (this.left || this.ws !== null) return; // left, or reconnected meanwhile
      if (refusal === null) {
        this.refusals = 0; // not about us; look again after as many refusals more
        this.lost(code);
        return;
      }
      if (refusal === "expired_token") {
        this.renew(code);
        return;
      }
      this.clearTimers();
      this.requeueInflight();
      this.setState("refused", { reason: this.token ? "token" : "no_token", code: refusal });
    }

    /**
     * The server refused our token as expired (close 4001 at its exp, or the history API's
     * expired_token after refused handshakes): ask the refreshToken hook once for another, and
     * connect with it after a backoff delay; with no hook, or nothing usable from it (not a
     * string, or the very token just refused), wait for authorize() ("expired"). The hook is
     * asked once per refusal by the server and never straight after another answer, so a hook
     * that hands out tokens the server refuses, even at once, cannot spin the page.
     */
    async renew(code) {
      this.detach(4000, "expired");
      this.clearTimers();
      this.requeueInflight();
      const refused = this.token;
      const renewal = {};
      this.renewal = renewal;
      let fresh = null;
      const hook = this.options.refreshToken;
      if (typeof hook === "function") {
        this.setState("connecting"); // not live: nothing is sent while the hook is asked
        try {
          fresh = await hook();
        } catch (_) {
          fresh = null; // no fresh token: say so below
        }
      }
      // Left, or connected meanwhile (authorize(), the Retry button): this answer is stale.
      if (this.left || this.renewal !== renewal) return;
      this.renewal = null;
      if (typeof fresh !== "string" || fresh === "" || fresh === refused) {
        this.setState("expired");
        return;
      }
      this.token = fresh;
      this.refusals = 0;
      this.emit("onToken", fresh);
      const window_ = this.retryWindow(code);
      const delay = Math.random() * window_;
      this.timers.reconnect = setTimeout(() => this.connect(), delay);
      this.setState("reconnecting", { delay, window: window_, code });
    }

    /**
     * Say, a little before the token's exp, that the server will soon close the connection
     * (onExpiring), unless a hook will fetch another. By this page's clock, so only a hint: a
     * token the server has just accepted but our clock calls expired means our clock is off,
     * and nothing is said.
     */
    watchExpiry() {
      const ttl = this.tokenTtl();
      if (ttl === null || ttl <= 0 || typeof this.options.refreshToken === "function") return;
      // setTimeout's delay is a 32-bit number of ms: a far expiry is simply not announced.
      const delay = Math.max(0, ttl * 1000 - this.options.expiryNotice);
      if (delay < 2 ** 31) this.timers.expiry = setTimeout(() => this.emit("onExpiring"), delay);
    }

    requeueInflight() {
      const inflight = this.inflight;
      this.inflight = null;
      if (inflight !== null) {
        inflight.status = "queued";
        this.emit("onOutbox", inflight);
      }
    }

    /** Forget the current socket: its late events are ignored from now on. */
    detach(code, reason) {
      const ws = this.ws;
      if (ws === null) return;
      this.ws = null;
      ws.onmessage = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch (_) {
        // already closed
      }
    }

    /** The socket is gone without us asking: requeue, then reconnect after a delay. */
    lost(code) {
      this.detach(4000, "timeout");
      this.clearTimers();
      const inflight = this.inflight;
      this.inflight = null;
      if (inflight !== null) {
        if (code === CLOSE_TOO_BIG) {
          this.forget(inflight, "not sent: too large for the server");
        } else {
          inflight.status = "queued";
          this.emit("onOutbox", inflight);
        }
      }
      const window_ = this.retryWindow(code);
      const delay = Math.random() * window_; // full jitter: uniform in [0, window)
      if (navigator.onLine === false) {
        this.setState("offline"); // the "online" event reconnects
        return;
      }
      this.timers.reconnect = setTimeout(() => this.connect(), delay);
      this.setState("reconnecting", { delay, window: window_, code });
    }

    /** How long the next reconnect may wait, at most, after a close with ``code``. */
    retryWindow(code) {
      if (code === CLOSE_RESTART) {
        // A deploy closes everyone at once: come back soon, but not all in the same instant.
        return this.options.restartJitter;
      }
      const { backoffBase, backoffCap } = this.options;
      const window_ = Math.min(backoffCap, backoffBase * 2 ** this.attempt);
      this.attempt += 1;
      return window_;
    }

    receive(data) {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (_) {
        return;
      }
      switch (frame.type) {
        case "message":
          return this.message(frame);
        case "ready":
          return this.ready(frame);
        case "ack":
          return this.ack(frame);
        case "error":
          return this.refused(frame);
        case "gap":
          return this.emit("onGap", frame);
        case "reset":
          return this.reset(frame);
        case "presence":
        case "join":
        case "leave":
        case "presence_diff":
          return this.presenceFrame(frame);
        case "typing":
          return this.emit("onTyping", String(frame.user));
        default:
          return undefined; // newer servers may add frame types
      }
    }

    ready(frame) {
      clearTimeout(this.timers.connect);
      this.attempt = 0;
      this.refusals = 0;
      this.resuming = true;
      this.user = frame.user;
      this.names.add(String(frame.user));
      if (Number.isSafeInteger(frame.max_message_chars) && frame.max_message_chars > 0) {
        this.maxChars = frame.max_message_chars;
      }
      this.epoch = frame.epoch ?? null;
      // A new connection's versions may start over (an in-memory server that restarted):
      // its own `presence` snapshot, next, starts them again.
      this.presence.version = -1;
      this.presence.shown = -1;
      this.presence.changed = new Map();
      this.watchExpiry();
      this.setState("live");
      this.emit("onReady", frame);
      this.pump();
    }

    /** The room's ids started over: what follows counts from frame.last_id in frame.epoch. */
    reset(frame) {
      this.epoch = frame.epoch;
      this.lastId = frame.last_id;
      this.lastTs = null;
      this.emit("onReset", frame);
    }

    message(frame) {
      // Exactly once, in id order: anything at or below what we showed is a repeat.
      if (typeof frame.id !== "number" || frame.id <= this.lastId) return;
      this.lastId = frame.id;
      this.lastTs = Number.isSafeInteger(frame.ts) ? frame.ts : null;
      const item = this.isMine(frame)
        ? this.outbox.find((entry) => entry.clientId === frame.client_id)
        : undefined;
      if (item !== undefined && item !== this.inflight) {
        // Ours, stored before a disconnect ate the ack: delivered, so never resend it.
        this.settle(item, frame.id);
      }
      this.emit("onMessage", frame);
    }

    /**
     * A message this page sent: one of our client_ids, from one of our names. The client_id
     * alone is not enough: it is in every broadcast, and with JWT another user's message may
     * carry it (dedupe is per sender there), which must not pass for ours.
     */
    isMine(frame) {
      return this.mine.has(frame.client_id) && this.names.has(String(frame.user));
    }

    // -- presence -----------------------------------------------------------------------

    /**
     * Who is here. `count` comes from the frame with the highest `version` (frames may arrive
     * out of order); names are a set: joins add, leaves remove, repeats change nothing. A
     * `presence` snapshot replaces the list: right after `ready`, and again whenever the
     * server found that announcements to it were lost. A snapshot older than a frame already
     * applied is ignored. A user's change is dated by its own step (`changed`; the frame's
     * `version` from servers before it): ignored at or below the last snapshot's version
     * (the snapshot was read after it), or at or below the last change applied for that
     * user: a user's leave and return, announced by two processes, can arrive the other way
     * round, and one process's round can carry a leave older than the return.
     */
    presenceFrame(frame) {
      const p = this.presence;
      const version = typeof frame.version === "number" ? frame.version : -1;
      const at = (entry) => (typeof entry.changed === "number" ? entry.changed : version);
      const entries = (list) => (Array.isArray(list) ? list.filter((m) => m !== null && typeof m === "object") : []);
      const change = (user, present, when) => {
        if (when <= p.shown) return; // the snapshot was read after it
        if ((p.changed.get(user) ?? -1) >= when) return; // a newer change of theirs came first
        p.changed.set(user, when);
        if (present) p.members.add(user);
        else p.members.delete(user);
      };
      if (frame.type === "presence") {
        if (version < p.version) return;
        p.members = new Set(entries(frame.members).map((m) => String(m.user)));
        p.shown = version;
        p.changed = new Map(); // the snapshot has every change up to it
      } else if (frame.type === "join") {
        change(String(frame.user), true, at(frame));
      } else if (frame.type === "leave") {
        change(String(frame.user), false, at(frame));
      } else {
        for (const m of entries(frame.joined)) change(String(m.user), true, at(m));
        for (const m of entries(frame.left)) change(String(m.user), false, at(m));
      }
      if (frame.type === "presence" || version > p.version) {
        p.version = version;
        p.count = frame.count;
      }
      this.emit("onPresence", { count: p.count, members: p.members });
    }

    /** The user is typing: tell the room, at most once per typingInterval. */
    typing() {
      const now = performance.now();
      if (this.state !== "live" || now - this.typedAt < this.options.typingInterval) return;
      this.typedAt = now;
      this.ws.send(JSON.stringify({ type: "typing" }));
    }

    // -- sending ------------------------------------------------------------------------

    /** Send the oldest queued message when live and nothing is in flight. */
    pump() {
      if (this.state !== "live" || this.inflight !== null || this.timers.resend) return;
      const item = this.outbox.find((entry) => entry.status === "queued");
      if (item === undefined) return;
      this.inflight = item;
      item.status = "sending";
      this.ws.send(JSON.stringify({ message: item.text, client_id: item.clientId }));
      this.timers.ack = setTimeout(() => this.lost(0), this.options.ackTimeout);
      this.emit("onOutbox", item);
    }

    ack(frame) {
      const item = this.inflight;
      if (item === null || frame.client_id !== item.clientId) return;
      clearTimeout(this.timers.ack);
      this.inflight = null;
      this.settle(item, frame.id);
      this.emit("onError", null, null);
      this.pump();
    }

    /** An error frame answers the one message in flight (the server answers in order). */
    refused(frame) {
      const item = this.inflight;
      this.emit("onError", frame.code, frame.detail);
      if (item === null) return;
      clearTimeout(this.timers.ack);
      this.inflight = null;
      if (RETRYABLE.has(frame.code)) {
        item.status = "queued";
        this.emit("onOutbox", item);
        this.timers.resend = setTimeout(() => {
          this.timers.resend = 0;
          this.pump();
        }, this.options.sendRetryDelay);
        return;
      }
      this.forget(item, `not sent: ${frame.detail || frame.code}`);
      this.pump();
    }

    settle(item, id) {
      this.outbox = this.outbox.filter((entry) => entry !== item);
      item.status = "sent";
      item.id = id;
      this.emit("onOutbox", item);
    }

    forget(item, reason) {
      this.outbox = this.outbox.filter((entry) => entry !== item);
      this.fail(item, reason);
    }

    fail(item, reason) {
      item.status = "failed";
      item.error = reason;
      this.emit("onOutbox", item);
    }

    // -- plumbing -----------------------------------------------------------------------

    clearTimers() {
      for (const name of Object.keys(this.timers)) {
        clearTimeout(this.timers[name]);
        this.timers[name] = 0;
      }
    }

    setState(state, detail = {}) {
      this.state = state;
      this.emit("onState", state, detail);
    }

    emit(name, ...args) {
      if (typeof this.on[name] === "function") this.on[name](...args);
    }
  }

  window.Parley = { ChatClient, DEFAULTS, ROOM_PATTERN, tokenClaims };
})();
