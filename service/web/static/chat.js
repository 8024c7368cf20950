/* The customer chat page (a demo widget to copy): opens a session over HTTP (POST /api/sessions), then
   speaks only the legacy WebSocket protocol (auth, join_session, send_message, ping). It shows what the
   server adds when it has it (queue position, an agent taking the session, typing, read receipts) and
   ignores every other frame, as legacy clients do. */
"use strict";

(function () {
  const { t: baseT, applyLanguage, Identity, api, Socket, Conversation } = window.Chat;
  const TEXTS = {
    zh: {
      title: "在线客服", start: "开始咨询", again: "开始新的咨询", history: "历史消息", messages: "消息列表",
      queued: "排队中，您前面还有 {n} 位", queuedFirst: "排队中，下一位就是您", waitingAgent: "正在为您接入客服…",
      assigned: "客服 #{a} 为您服务", connected: "已连接", you: "客户",
      idleWarning: "长时间没有消息，会话将在 {n} 秒后自动结束",
    },
    en: {
      title: "Customer service", start: "Start chatting", again: "Start a new conversation", history: "History",
      messages: "Messages", queued: "You are number {p} in the queue", queuedFirst: "You are next in the queue",
      waitingAgent: "Connecting you to an agent…", assigned: "Agent #{a} is helping you", connected: "Connected", you: "Customer",
      idleWarning: "No messages for a while: this conversation closes in {n} s",
    },
  };
  const t = (key, vars) => {
    let text = baseT(key, TEXTS);
    for (const [name, value] of Object.entries(vars || {})) text = text.replace(`{${name}}`, String(value));
    return text;
  };
  const $ = (id) => document.getElementById(id);
  const identity = new Identity("chat.auth");
  const state = { mode: "trust", auth: null, me: 0, session: null, socket: null, conversation: null };

  function status(text) { $("chat-status").textContent = text; }

  function languageLink() {
    const query = new URLSearchParams(location.search);
    const en = query.get("lang") === "en";
    if (en) query.delete("lang"); else query.set("lang", "en");
    $("lang-link").href = location.pathname + (query.toString() ? "?" + query : "");
    $("lang-link").textContent = en ? "中文" : "English";
    document.title = t("title");
  }

  async function boot() {
    applyLanguage(TEXTS);
    languageLink();
    const probe = await api(null, "GET", "/web/whoami");
    state.mode = probe.body && probe.body.auth_mode === "jwt" ? "jwt" : "trust";
    $("trust-warning").hidden = state.mode !== "trust";
    $("start-trust").hidden = state.mode !== "trust";
    $("start-jwt").hidden = state.mode !== "jwt";
    $("start-form").addEventListener("submit", (event) => { event.preventDefault(); submitStart(); });
    $("again").addEventListener("click", () => openSession());
    const token = Identity.fragmentToken();
    const saved = token ? { token } : identity.load();
    if (saved && (saved.token || saved.userId)) start(saved);
    else $("start-form").hidden = false;
  }

  function submitStart() {
    $("start-error").textContent = "";
    if (state.mode === "jwt") {
      const token = $("start-token").value.trim();
      if (!token) { $("start-error").textContent = baseT("badToken"); return; }
      start({ token });
    } else {
      const raw = $("start-user").value.trim();
      if (!/^[0-9]{1,19}$/.test(raw) || /^0+$/.test(raw)) { $("start-error").textContent = baseT("badUserId"); return; }
      start({ userId: raw });
    }
  }

  async function start(auth) {
    const who = await api(auth, "GET", "/web/whoami");
    if (who.status !== 200 || !who.body || !who.body.user_id) {
      identity.clear();
      $("start-form").hidden = false;
      $("start-error").textContent = baseT("authFailed");
      return;
    }
    identity.save(auth);
    state.auth = auth; state.me = Number(who.body.user_id);
    $("start-form").hidden = true;
    $("conversation").hidden = false;
    state.socket = new Socket(auth, {
      // The session is opened once the socket is authenticated, so that the first queue_position (sent to
      // the customer's connections when the session enters the queue) finds this page connected.
      onReady: () => { if (state.session) state.conversation.join(); else if (!state.opening) openSession(); },
      onFrame,
      onState: (s) => {
        $("banner").hidden = s !== "offline";
        document.body.dataset.connection = s;
        if (s === "offline") state.conversation.suspend();
      },
      onAuthError: () => { identity.clear(); location.reload(); },
    });
    state.conversation = new Conversation($("conversation"), {
      page: "chat", auth, me: state.me, socket: state.socket,
      labelFor: (id) => (id === state.me ? t("you") : `${baseT("agent")} #${id}`),
    });
    state.socket.start();
  }

  /* The customer's open session, or a new one (the server answers 200 or 201). */
  async function openSession() {
    state.opening = true;
    try { await openAndShow(); } finally { state.opening = false; }
  }

  async function openAndShow() {
    const body = state.auth.token ? {} : { user_id: String(state.auth.userId) };
    const { status: code, body: session } = await api(state.auth, "POST", "/api/sessions", body);
    if (code !== 200 && code !== 201) {
      status(baseT("error") + (session && session.error || code));
      return;
    }
    state.session = session;
    status(session.agent_id ? t("assigned", { a: session.agent_id }) : t("waitingAgent"));
    await state.conversation.open(session.id);
  }

  function onFrame(frame) {
    const conv = state.conversation;
    if (frame.type === "error") {
      if (!conv.failOldest(frame)) status(frame.error || frame.code);
      if (frame.code === "session_closed") conv.setClosed(true);
      return;
    }
    conv.handle(frame);
    if (!state.session || Number(frame.session_id) !== Number(state.session.id)) return;
    switch (frame.type) {
      case "queue_position":
        status(Number(frame.position) <= 1 ? t("queuedFirst") : t("queued", { n: Number(frame.position) - 1, p: frame.position }));
        break;
      case "session_assigned":
        state.session.agent_id = frame.agent_id;
        status(t("assigned", { a: frame.agent_id }));
        break;
      case "session_transferred":
        state.session.agent_id = frame.to_agent_id;
        status(t("assigned", { a: frame.to_agent_id }));
        break;
      case "new_message":
        if (Number(frame.message.sender_id) !== state.me && !state.session.agent_id) {
          state.session.agent_id = frame.message.sender_id;
          status(t("assigned", { a: frame.message.sender_id }));
        }
        break;
      case "session_idle_warning":
        status(t("idleWarning", { n: frame.closes_in }));
        break;
      case "session_closed":
        status(baseT("sessionClosed"));
        break;
      default:
    }
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
