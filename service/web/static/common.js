/* Shared by the agent console and the customer page: i18n, DOM building (text only, never HTML),
   identities, the HTTP API, a self-reconnecting WebSocket, and a conversation view that replays on
   reconnect and shows every message once, in id order. No framework, no build step. */
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const LANG = params.get("lang") === "en" ? "en" : "zh";
  const MAX_ID = "9223372036854775807";
  const PAGE = 50;
  const TYPING_SHOWN_MS = 6500;   // a little more than the server's TYPING_TIMEOUT (5 s)
  const SEND_TIMEOUT_MS = 10000;  // no new_message for a send in this long: failed (the user may retry)
  const CURSOR_SAFETY_MS = 5000;  // replay from the newest message received at least this long ago

  const TEXTS = {
    zh: {
      disconnected: "连接已断开，正在重新连接…", connecting: "正在连接…",
      trustWarning: "信任模式（AUTH_MODE=trust）：身份未经验证，任何人都可以使用任意用户ID。请勿在生产环境中使用。",
      userId: "用户ID", token: "令牌（JWT）", signIn: "登录", signOut: "退出",
      badUserId: "请输入有效的用户ID", badToken: "请粘贴令牌",
      sending: "发送中…", failed: "发送失败", retry: "重试", read: "已读",
      typing: "对方正在输入…", me: "我", customer: "客户", agent: "客服",
      earlier: "加载更早的消息", noEarlier: "没有更早的消息了", loading: "加载中…",
      send: "发送", placeholder: "输入消息，Enter 发送，Shift+Enter 换行", messageLabel: "消息",
      sessionClosed: "会话已结束", tooLong: "消息内容过长",
      error: "出错了：", authFailed: "认证失败，请重新登录",
    },
    en: {
      disconnected: "Disconnected. Reconnecting…", connecting: "Connecting…",
      trustWarning: "Trust mode (AUTH_MODE=trust): identities are not verified; anyone can use any user id. Do not use in production.",
      userId: "User id", token: "Token (JWT)", signIn: "Sign in", signOut: "Sign out",
      badUserId: "Enter a valid user id", badToken: "Paste a token",
      sending: "Sending…", failed: "Not sent", retry: "Retry", read: "Read",
      typing: "typing…", me: "Me", customer: "Customer", agent: "Agent",
      earlier: "Load earlier messages", noEarlier: "No earlier messages", loading: "Loading…",
      send: "Send", placeholder: "Type a message; Enter sends, Shift+Enter adds a line", messageLabel: "Message",
      sessionClosed: "The conversation has ended", tooLong: "The message is too long",
      error: "Error: ", authFailed: "Sign-in failed; please sign in again",
    },
  };

  function t(key, extra) {
    const table = Object.assign({}, TEXTS[LANG], extra ? extra[LANG] : {});
    return table[key] !== undefined ? table[key] : key;
  }

  /* Build an element. Children that are strings become text nodes: data never becomes markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function applyLanguage(extra) {
    document.documentElement.lang = LANG === "en" ? "en" : "zh-CN";
    for (const node of document.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t, extra);
    for (const node of document.querySelectorAll("[data-t-placeholder]")) node.placeholder = t(node.dataset.tPlaceholder, extra);
    for (const node of document.querySelectorAll("[data-t-label]")) node.setAttribute("aria-label", t(node.dataset.tLabel, extra));
  }

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));  // available on plain http too
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /* Identity kept per browser tab (sessionStorage). A token handed in the URL fragment (#token=...) is
     taken from there and the fragment removed at once: fragments never reach the server or its logs. */
  class Identity {
    constructor(key) { this.key = key; }
    load() {
      try { return JSON.parse(sessionStorage.getItem(this.key) || "null"); } catch (e) { return null; }
    }
    save(value) { sessionStorage.setItem(this.key, JSON.stringify(value)); }
    clear() { sessionStorage.removeItem(this.key); }
    static fragmentToken() {
      const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
      const token = hash.get("token");
      if (token) history.replaceState(null, "", location.pathname + location.search);
      return token;
    }
  }

  function headersFor(auth) {
    const headers = {};
    if (auth && auth.token) headers.Authorization = "Bearer " + auth.token;
    else if (auth && auth.userId) headers["X-User-Id"] = String(auth.userId);
    return headers;
  }

  /* JSON over HTTP: {status, body}; status 0 when the server could not be reached. */
  async function api(auth, method, path, body) {
    const headers = headersFor(auth);
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      const response = await fetch(path, init);
      let payload = null;
      try { payload = await response.json(); } catch (e) { payload = null; }
      return { status: response.status, body: payload };
    } catch (e) {
      return { status: 0, body: null };
    }
  }

  function authFrame(auth) {
    // Ids as strings of digits (the protocol takes both): a JS number is exact only up to 2**53.
    return auth.token ? { type: "auth", token: auth.token } : { type: "auth", user_id: String(auth.userId) };
  }

  const AUTH_ERRORS = new Set(["auth_failed", "unauthenticated", "missing_user_id", "invalid_user_id"]);

  /* One WebSocket to the service that authenticates, pings, and reconnects by itself with capped backoff.
     `onReady` runs after every successful auth (rejoin there); `onFrame` gets every other frame. */
  class Socket {
    constructor(auth, { onReady, onFrame, onState, onAuthError }) {
      this.auth = auth;
      this.onReady = onReady; this.onFrame = onFrame; this.onState = onState; this.onAuthError = onAuthError;
      this.ws = null; this.ready = false; this.stopped = false; this.attempt = 0;
      this.timer = null; this.pinger = null;
    }
    get url() { return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/"; }
    start() { this.stopped = false; this.connect(); }
    stop() {
      this.stopped = true;
      clearTimeout(this.timer); clearInterval(this.pinger);
      if (this.ws) this.ws.close(1000);
    }
    connect() {
      if (this.stopped) return;
      this.onState("connecting");
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onmessage = (event) => {
        let frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        if (frame.type === "connected") { ws.send(JSON.stringify(authFrame(this.auth))); return; }
        if (frame.type === "auth_success") {
          this.ready = true; this.attempt = 0; this.onState("online");
          clearInterval(this.pinger);
          this.pinger = setInterval(() => this.send({ type: "ping" }), 20000);
          this.onReady();
          return;
        }
        if (frame.type === "pong") return;
        if (!this.ready && frame.type === "error" && AUTH_ERRORS.has(frame.code)) {
          this.stopped = true; ws.close(1000); this.onAuthError(frame); return;
        }
        this.onFrame(frame);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ready = false; clearInterval(this.pinger);
        if (this.stopped) return;
        this.onState("offline");
        const delay = Math.min(5000, 250 * 2 ** this.attempt++) * (0.75 + Math.random() / 2);
        this.timer = setTimeout(() => this.connect(), delay);
      };
    }
    /* Send when connected and authenticated; false otherwise (the caller keeps the work for onReady). */
    send(frame) {
      if (!this.ready || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    }
  }

  function clock(createdAt) {
    const match = /(\d\d:\d\d)(:\d\d)?$/.exec(createdAt || "");
    return match ? match[1] : "";
  }

  /* The view of one session: history (scroll-back by before_id), live messages merged by id, sends that
     show sending/failed and retry with the same client_msg_id, typing and read receipts. Replay after a
     reconnect or a reload cannot duplicate anything: every message is kept by id, pending ones by
     client_msg_id, and the unsent ones survive a reload in sessionStorage. */
  class Conversation {
    constructor(root, { page, auth, me, socket, labelFor, sendsTyping, sendsRead, onChange, onPreviewSend }) {
      this.root = root; this.page = page; this.auth = auth; this.me = Number(me); this.socket = socket;
      this.labelFor = labelFor; this.sendsTyping = !!sendsTyping; this.sendsRead = !!sendsRead;
      this.onChange = onChange || (() => {});
      this.onPreviewSend = onPreviewSend || null;
      this.previewing = false;
      this.log = root.querySelector(".log");
      this.pendingList = root.querySelector(".pending");
      this.typingLine = root.querySelector(".typing");
      this.earlier = root.querySelector(".earlier");
      this.input = root.querySelector("textarea");
      this.form = root.querySelector("form.composer");
      this.scroller = root.querySelector(".scroller");
      this.sessionId = null;
      this.reset();
      this.form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
      this.input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); this.submit(); }
      });
      this.input.addEventListener("input", () => this.typed());
      this.earlier.addEventListener("click", () => this.loadEarlier());
      this.scroller.addEventListener("scroll", () => { if (this.scroller.scrollTop === 0) this.loadEarlier(); });
      document.addEventListener("visibilitychange", () => this.markRead());
    }

    reset() {
      this.messages = new Map();          // id -> {message, node, receivedAt}
      this.pending = new Map();           // client_msg_id -> {content, node, state, timer}
      this.othersRead = 0; this.readSent = 0; this.joined = false; this.closed = false; this.loaded = false;
      clearTimeout(this.readTimer); this.readTimer = null;
      this.oldest = null; this.hasEarlier = false; this.loadingEarlier = false;
      this.typingUsers = new Map(); this.typingSince = 0; this.typingStop = null;
      if (this.log) { this.log.replaceChildren(); this.pendingList.replaceChildren(); }
      if (this.typingLine) this.typingLine.hidden = true;
      if (this.earlier) this.earlier.hidden = true;
    }

    get outboxKey() { return `${this.page}.outbox.${this.me}.${this.sessionId}`; }

    saveOutbox() {
      const items = [...this.pending].map(([cid, p]) => ({ cid, content: p.content }));
      if (items.length) sessionStorage.setItem(this.outboxKey, JSON.stringify(items));
      else sessionStorage.removeItem(this.outboxKey);
    }

    /* `preview`: show the history without joining, for an agent looking at a waiting session of the desk (a
       join would make them its agent unannounced); `goLive()` joins once it is theirs, and a message written
       meanwhile first asks `onPreviewSend` (the console's claim) and goes out after the join. */
    async open(sessionId, { readOnly, preview } = {}) {
      this.sessionId = Number(sessionId);
      this.reset();
      this.previewing = !!preview;
      this.closed = !!readOnly;
      this.setClosed(this.closed);
      let saved = [];
      try { saved = JSON.parse(sessionStorage.getItem(this.outboxKey) || "[]"); } catch (e) { saved = []; }
      for (const item of saved) this.addPending(item.cid, item.content, "sending");
      const opened = this.sessionId;
      const { status, body } = await api(this.auth, "GET", `/api/sessions/${opened}/messages?before_id=${MAX_ID}&limit=${PAGE}`);
      if (this.sessionId !== opened) return;
      if (status === 200) {
        this.hasEarlier = body.messages.length === PAGE;
        for (const message of body.messages) this.add(message);
        this.earlier.hidden = !this.hasEarlier;
        this.scrollToEnd();
      }
      this.loaded = true;
      this.join();
    }

    goLive() {
      if (!this.previewing) return;
      this.previewing = false;
      this.join();
    }

    /* While previewing nothing arrives live: read what came since the newest message shown. */
    refreshPreview() {
      if (!this.previewing || !this.loaded || this.sessionId === null) return;
      let newest = 0;
      for (const id of this.messages.keys()) if (id > newest) newest = id;
      this.fetchAfter(newest);
    }

    /* Join (or rejoin after a reconnect) with replay from a cursor that cannot skip a message: the newest
       one received at least a few seconds ago (ids are allocated before commit; see the README). */
    join() {
      if (this.previewing && this.pending.size && this.onPreviewSend) this.onPreviewSend(this.sessionId);
      if (this.sessionId === null || this.closed || !this.loaded || this.previewing) return;  // after history
      const cutoff = Date.now() - CURSOR_SAFETY_MS;
      let cursor = 0, oldest = null;
      for (const [id, entry] of this.messages) {
        if (entry.receivedAt <= cutoff && id > cursor) cursor = id;
        if (oldest === null || id < oldest) oldest = id;
      }
      if (cursor === 0 && oldest !== null) cursor = oldest - 1;
      this.joined = false;
      this.socket.send({ type: "join_session", session_id: this.sessionId, last_message_id: cursor });
    }

    /* A frame from the socket; true when it was about this conversation. */
    handle(frame) {
      if (this.sessionId === null || Number(frame.session_id) !== this.sessionId) return false;
      switch (frame.type) {
        case "joined_session":
          this.joined = true;
          if (frame.truncated) this.fetchAfter(frame.resume_after_id);
          for (const [cid, p] of this.pending) if (p.state === "sending") this.transmit(cid);
          break;
        case "new_message": this.add(frame.message, true); break;
        case "typing": this.showTyping(frame); break;
        case "message_read":
          if (Number(frame.user_id) !== this.me && frame.message_id > this.othersRead) {
            this.othersRead = frame.message_id; this.paintRead();
          }
          break;
        case "session_closed": this.setClosed(true); break;
        default: return false;
      }
      return true;
    }

    async fetchAfter(afterId) {
      const opened = this.sessionId;
      for (;;) {
        const { status, body } = await api(this.auth, "GET", `/api/sessions/${opened}/messages?after_id=${afterId}&limit=500`);
        if (status !== 200 || this.sessionId !== opened) return;
        for (const message of body.messages) this.add(message);
        if (body.messages.length < 500) return;
        afterId = body.messages[body.messages.length - 1].id;
      }
    }

    async loadEarlier() {
      if (!this.hasEarlier || this.loadingEarlier || this.oldest === null) return;
      this.loadingEarlier = true;
      this.earlier.textContent = t("loading");
      const opened = this.sessionId;
      const height = this.scroller.scrollHeight;
      const { status, body } = await api(this.auth, "GET", `/api/sessions/${opened}/messages?before_id=${this.oldest}&limit=${PAGE}`);
      this.loadingEarlier = false;
      this.earlier.textContent = t("earlier");
      if (status !== 200 || this.sessionId !== opened) return;
      for (const message of body.messages) this.add(message);
      this.hasEarlier = body.messages.length === PAGE;
      this.earlier.hidden = !this.hasEarlier;
      this.scroller.scrollTop += this.scroller.scrollHeight - height;  // keep what the reader was looking at
    }

    add(message, live) {
      const id = Number(message.id);
      if (this.messages.has(id)) return;
      const mine = Number(message.sender_id) === this.me;
      if (mine && message.client_msg_id && this.pending.has(message.client_msg_id)) {
        const p = this.pending.get(message.client_msg_id);
        clearTimeout(p.timer); p.node.remove();
        this.pending.delete(message.client_msg_id);
        this.saveOutbox();
      }
      const stick = this.nearEnd();
      const node = this.render(message, mine);
      this.messages.set(id, { message, node, receivedAt: Date.now() });
      let before = null;  // keep id order whatever the arrival order
      for (const child of this.log.children) {
        if (Number(child.dataset.id) > id) { before = child; break; }
      }
      this.log.insertBefore(node, before);
      if (this.oldest === null || id < this.oldest) this.oldest = id;
      if (!mine) this.clearTyping(Number(message.sender_id));
      if (live && stick) this.scrollToEnd();
      this.paintRead();
      this.markRead();
      this.onChange();
    }

    render(message, mine) {
      return el("li", { className: "msg " + (mine ? "mine" : "theirs"), "data-id": message.id,
                        "data-sender": message.sender_id },
        el("div", { className: "meta" },
          el("span", { className: "who", text: mine ? t("me") : this.labelFor(Number(message.sender_id)) }),
          el("time", { text: clock(message.created_at), title: message.created_at })),
        el("div", { className: "body", text: message.content }),
        mine ? el("div", { className: "receipt" }) : null);
    }

    paintRead() {
      for (const [id, entry] of this.messages) {
        const receipt = entry.node.querySelector(".receipt");
        if (receipt && id <= this.othersRead && !receipt.textContent) receipt.textContent = t("read");
      }
    }

    /* Tell the others we have read up to the newest message someone else sent, while the page is visible;
       coalesced, so that a page of history or a burst of messages costs one `read`. */
    markRead() {
      if (!this.sendsRead || this.readTimer) return;
      this.readTimer = setTimeout(() => { this.readTimer = null; this.sendRead(); }, 250);
    }

    sendRead() {
      if (document.visibilityState !== "visible" || this.sessionId === null) return;
      let newest = 0;
      for (const [id, entry] of this.messages) if (id > newest && Number(entry.message.sender_id) !== this.me) newest = id;
      if (newest > this.readSent && this.socket.send({ type: "read", session_id: this.sessionId, message_id: newest })) {
        this.readSent = newest;
      }
    }

    addPending(cid, content, state) {
      const retry = el("button", { type: "button", className: "retry", text: t("retry"), onclick: () => this.retry(cid) });
      const node = el("li", { className: "msg mine pending-msg", "data-cid": cid },
        el("div", { className: "meta" }, el("span", { className: "who", text: t("me") })),
        el("div", { className: "body", text: content }),
        el("div", { className: "state" }, el("span", { className: "state-text" }), retry));
      this.pendingList.append(node);
      this.pending.set(cid, { content, node, state, timer: null });
      this.setState(cid, state);
      this.saveOutbox();
      this.scrollToEnd();
    }

    setState(cid, state) {
      const p = this.pending.get(cid);
      if (!p) return;
      p.state = state;
      p.node.dataset.state = state;
      p.node.querySelector(".state-text").textContent = state === "failed" ? t("failed") : t("sending");
      p.node.querySelector(".retry").hidden = state !== "failed";
    }

    submit() {
      const content = this.input.value;
      if (!content.trim() || this.sessionId === null || this.closed) return;
      this.input.value = "";
      this.stopTyping(false);
      const cid = randomId();
      this.addPending(cid, content, "sending");
      if (this.joined) this.transmit(cid);  // otherwise sent when the (re)join completes
      else if (this.previewing && this.onPreviewSend) this.onPreviewSend(this.sessionId);
    }

    transmit(cid) {
      const p = this.pending.get(cid);
      if (!p) return;
      this.setState(cid, "sending");
      clearTimeout(p.timer);
      if (!this.socket.send({ type: "send_message", session_id: this.sessionId, content: p.content, client_msg_id: cid })) return;
      p.timer = setTimeout(() => this.setState(cid, "failed"), SEND_TIMEOUT_MS);
    }

    retry(cid) { if (this.joined) this.transmit(cid); else this.setState(cid, "sending"); }

    /* An error frame while sends are in flight is the answer to the oldest of them (one socket, in order). */
    failOldest(frame) {
      for (const [cid, p] of this.pending) {
        if (p.state === "sending" && p.timer) {
          clearTimeout(p.timer); p.timer = null;
          this.setState(cid, "failed");
          p.node.querySelector(".state-text").textContent = t("failed") + (frame.error ? ": " + frame.error : "");
          return true;
        }
      }
      return false;
    }

    typed() {
      if (!this.sendsTyping || this.sessionId === null || this.closed) return;
      const now = Date.now();
      if (now - this.typingSince > 3000 && this.socket.send({ type: "typing", session_id: this.sessionId, state: "start" })) {
        this.typingSince = now;
      }
      clearTimeout(this.typingStop);
      this.typingStop = setTimeout(() => this.stopTyping(true), 2500);
    }

    stopTyping(tell) {
      clearTimeout(this.typingStop);
      if (tell && this.typingSince) this.socket.send({ type: "typing", session_id: this.sessionId, state: "stop" });
      this.typingSince = 0;
    }

    showTyping(frame) {
      const user = Number(frame.user_id);
      if (user === this.me) return;
      clearTimeout(this.typingUsers.get(user));
      if (frame.state === "start") this.typingUsers.set(user, setTimeout(() => this.clearTyping(user), TYPING_SHOWN_MS));
      else this.typingUsers.delete(user);
      this.paintTyping();
    }

    clearTyping(user) {
      if (!this.typingUsers.has(user)) return;
      clearTimeout(this.typingUsers.get(user));
      this.typingUsers.delete(user);
      this.paintTyping();
    }

    paintTyping() {
      const users = [...this.typingUsers.keys()];
      this.typingLine.hidden = users.length === 0;
      this.typingLine.textContent = users.length ? users.map((u) => this.labelFor(u)).join(", ") + " " + t("typing") : "";
    }

    setClosed(closed) {
      this.closed = closed;
      this.root.classList.toggle("closed", closed);
      this.input.disabled = closed;
      this.form.querySelector("button[type=submit]").disabled = closed;
      const note = this.root.querySelector(".closed-note");
      if (note) note.hidden = !closed;
    }

    nearEnd() { return this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 80; }
    scrollToEnd() { this.scroller.scrollTop = this.scroller.scrollHeight; }

    /* The socket dropped: sends in flight stay "sending" and go again, same client_msg_id, after the rejoin. */
    suspend() {
      this.joined = false;
      for (const p of this.pending.values()) { clearTimeout(p.timer); p.timer = null; }
    }

    close() { this.sessionId = null; this.reset(); }
  }

  window.Chat = { LANG, t, el, applyLanguage, Identity, api, Socket, Conversation, randomId };
})();
