/* The agent console: sign-in, status, the queue and "my sessions" (live), and one conversation at a time.
   Speaks the service's WebSocket protocol (with the agent desk's messages when the server has the desk)
   and its HTTP API, with the same identities as any other client. */
"use strict";

(function () {
  const { t: baseT, el, applyLanguage, Identity, api, Socket, Conversation } = window.Chat;
  const TEXTS = {
    zh: {
      title: "客服工作台", skip: "跳到消息输入框", status: "状态", online: "在线", away: "离开", offline: "离线",
      signInTitle: "坐席登录", agentUserId: "坐席用户ID", sessions: "会话", queue: "排队中", mine: "我的会话",
      queueEmpty: "没有排队的客户", mineEmpty: "暂无会话", back: "返回", pick: "请选择一个会话",
      claim: "接入", transfer: "转接", transferTo: "转接给", closeSession: "结束会话", history: "历史消息",
      messages: "消息列表", notAgent: "该用户不是客服坐席，不能使用坐席工作台。", session: "会话",
      waiting: "等待", unread: "未读", claimed: "已接入会话 #{s}", assignedElsewhere: "会话 #{s} 已由坐席 #{a} 接入",
      transferredToMe: "会话 #{s} 已从坐席 #{a} 转接给你", transferredAway: "会话 #{s} 已转接给坐席 #{a}",
      closedNotice: "会话 #{s} 已结束", pickAgent: "选择坐席", noAgents: "没有其他坐席",
      idleWarning: "会话 #{s} 将在 {n} 秒后因无消息自动结束",
      already_assigned: "该会话已被其他坐席接入", over_capacity: "已达到接待上限", agent_unavailable: "对方坐席不可用",
      forbidden: "无权操作该会话", signedInAs: "坐席 #{u}",
    },
    en: {
      title: "Agent console", skip: "Skip to the message box", status: "Status", online: "Online", away: "Away",
      offline: "Offline", signInTitle: "Agent sign-in", agentUserId: "Agent user id", sessions: "Sessions",
      queue: "Queue", mine: "My sessions", queueEmpty: "Nobody is waiting", mineEmpty: "No sessions yet",
      back: "Back", pick: "Pick a session", claim: "Claim", transfer: "Transfer", transferTo: "Transfer to",
      closeSession: "Close", history: "History", messages: "Messages",
      notAgent: "This user is not an agent and cannot use the agent console.", session: "Session",
      waiting: "waiting", unread: "unread", claimed: "You took session #{s}",
      assignedElsewhere: "Session #{s} was taken by agent #{a}", transferredToMe: "Session #{s} was transferred to you by agent #{a}",
      transferredAway: "Session #{s} was transferred to agent #{a}", closedNotice: "Session #{s} is closed",
      pickAgent: "Pick an agent", noAgents: "No other agents", idleWarning: "Session #{s} closes in {n} s unless someone writes",
      already_assigned: "Another agent already has this session", over_capacity: "At capacity",
      agent_unavailable: "That agent is not available", forbidden: "Not allowed", signedInAs: "Agent #{u}",
    },
  };
  const t = (key, vars) => {
    let text = baseT(key, TEXTS);
    for (const [name, value] of Object.entries(vars || {})) text = text.replace(`{${name}}`, String(value));
    return text;
  };
  const DESK_CODES = new Set(["already_assigned", "over_capacity", "agent_unavailable"]);
  const $ = (id) => document.getElementById(id);
  const identity = new Identity("console.auth");

  const state = {
    mode: "trust", auth: null, me: 0, desk: false, socket: null, conversation: null,
    sessions: new Map(), queue: [], queueFetchedAt: 0, current: null, poller: null, ticker: null,
    status: sessionStorage.getItem("console.status") || "online", agents: [],
  };

  function notify(text) { $("notice").textContent = text; }

  function show(view) {
    $("signin").hidden = view !== "signin";
    $("workspace").hidden = view !== "workspace";
    $("who").hidden = view !== "workspace";
  }

  function languageLink() {
    const query = new URLSearchParams(location.search);
    const en = query.get("lang") === "en";
    if (en) query.delete("lang"); else query.set("lang", "en");
    const link = $("lang-link");
    link.href = location.pathname + (query.toString() ? "?" + query : "");
    link.textContent = en ? "中文" : "English";
    document.title = t("title");
  }

  async function boot() {
    applyLanguage(TEXTS);
    languageLink();
    const probe = await api(null, "GET", "/web/whoami");
    state.mode = probe.body && probe.body.auth_mode === "jwt" ? "jwt" : "trust";
    $("trust-warning").hidden = state.mode !== "trust";
    $("signin-trust").hidden = state.mode !== "trust";
    $("signin-jwt").hidden = state.mode !== "jwt";
    $("signin-form").addEventListener("submit", (event) => { event.preventDefault(); submitSignIn(); });
    $("sign-out").addEventListener("click", signOut);
    $("status-select").addEventListener("change", () => setStatus($("status-select").value));
    $("back").addEventListener("click", () => openSession(null));
    $("claim").addEventListener("click", claim);
    $("transfer").addEventListener("click", transfer);
    $("transfer-select").addEventListener("focus", loadAgents);
    $("close").addEventListener("click", closeSession);
    const token = Identity.fragmentToken();
    const saved = token ? { token } : identity.load();
    if (saved && (saved.token || saved.userId)) await signIn(saved);
    else show("signin");
  }

  function submitSignIn() {
    $("signin-error").textContent = "";
    if (state.mode === "jwt") {
      const token = $("signin-token").value.trim();
      if (!token) { $("signin-error").textContent = baseT("badToken"); return; }
      signIn({ token });
    } else {
      const raw = $("signin-user").value.trim();
      if (!/^[0-9]{1,19}$/.test(raw) || /^0+$/.test(raw)) { $("signin-error").textContent = baseT("badUserId"); return; }
      signIn({ userId: raw });
    }
  }

  /* Ask the server who this is (the API's own rules) and open the agent views only for an agent. */
  async function signIn(auth) {
    const { status, body } = await api(auth, "GET", "/web/whoami");
    if (status !== 200 || !body || !body.user_id) {
      identity.clear(); show("signin");
      $("signin-error").textContent = status === 401 || status === 400 ? baseT("authFailed") : baseT("error") + (body && body.error || status);
      return;
    }
    if (!body.is_agent) {
      identity.clear(); show("signin");
      $("signin-error").textContent = t("notAgent");
      return;
    }
    identity.save(auth);
    state.auth = auth; state.me = Number(body.user_id);
    $("me-label").textContent = t("signedInAs", { u: state.me });
    show("workspace");
    start();
  }

  function signOut() {
    identity.clear();
    sessionStorage.removeItem("console.current");
    if (state.socket) state.socket.stop();
    clearInterval(state.poller); clearInterval(state.ticker);
    location.reload();
  }

  function start() {
    state.socket = new Socket(state.auth, {
      onReady, onFrame,
      onState: (s) => {
        $("banner").hidden = s !== "offline";
        document.body.dataset.connection = s;
        if (s === "offline" && state.conversation) state.conversation.suspend();
      },
      onAuthError: () => { identity.clear(); location.reload(); },
    });
    state.conversation = new Conversation($("conversation"), {
      page: "console", auth: state.auth, me: state.me, socket: state.socket, labelFor, sendsTyping: true,
      sendsRead: true, onChange: () => renderLists(), onPreviewSend: () => claim(),
    });
    state.socket.start();
    refresh();
    state.poller = setInterval(refresh, 3000);
    state.ticker = setInterval(renderWaiting, 1000);
    const current = sessionStorage.getItem("console.current");
    if (current) openSession(Number(current));
  }

  function onReady() {
    if (state.desk) state.socket.send({ type: "set_status", status: state.status });
    if (state.current !== null) state.conversation.join();
    refresh();
  }

  function onFrame(frame) {
    if (frame.type === "error") return onError(frame);
    const handled = state.conversation.handle(frame);
    const sid = Number(frame.session_id);
    switch (frame.type) {
      case "agent_status":
        if (Number(frame.user_id) === state.me && frame.status !== "offline") {
          state.status = frame.status; $("status-select").value = frame.status;
          sessionStorage.setItem("console.status", frame.status);
        }
        break;
      case "session_assigned":
        if (Number(frame.agent_id) === state.me) {
          notify(t("claimed", { s: sid }));
          if (sid === state.current) state.conversation.goLive();
        }
        else if (sid === state.current) notify(t("assignedElsewhere", { s: sid, a: frame.agent_id }));
        patchSession(sid, { agent_id: Number(frame.agent_id) });
        refresh();
        break;
      case "session_transferred":
        patchSession(sid, { agent_id: Number(frame.to_agent_id) });
        if (Number(frame.to_agent_id) === state.me) notify(t("transferredToMe", { s: sid, a: frame.from_agent_id }));
        else if (Number(frame.from_agent_id) === state.me) {
          notify(t("transferredAway", { s: sid, a: frame.to_agent_id }));
          if (sid === state.current) openSession(null, true);
        }
        refresh();
        break;
      case "session_idle_warning":
        notify(t("idleWarning", { s: sid, n: frame.closes_in }));
        break;
      case "session_closed":
        notify(t("closedNotice", { s: sid }));
        refresh();
        break;
      default:
        if (!handled) return;
    }
    renderHeader();
  }

  function onError(frame) {
    const conv = state.conversation;
    if (DESK_CODES.has(frame.code)) { notify(t(frame.code)); return; }
    if (!conv.joined && conv.sessionId !== null) {
      if (frame.code === "session_closed") conv.setClosed(true);
      notify(frame.error || frame.code);
      return;
    }
    if (!conv.failOldest(frame)) notify(frame.error || frame.code);
  }

  function patchSession(sid, fields) {
    const session = state.sessions.get(sid);
    if (session) Object.assign(session, fields);
  }

  /* The lists: GET /api/sessions (with unread counts) and, with the desk, GET /api/queue. */
  async function refresh() {
    if (!state.auth || state.refreshing) return;  // one refresh at a time, however slow the server is
    state.refreshing = true;
    if (state.conversation) state.conversation.refreshPreview();
    let sessions, queue;
    try {
      [sessions, queue] = await Promise.all([
        api(state.auth, "GET", "/api/sessions?status=active&limit=500"),
        api(state.auth, "GET", "/api/queue"),
      ]);
    } finally {
      state.refreshing = false;
    }
    if (sessions.status === 200) {
      state.sessions = new Map(sessions.body.sessions.map((s) => [Number(s.id), s]));
    }
    const hadDesk = state.desk;
    state.desk = queue.status === 200 || (queue.status !== 404 && state.desk);
    if (state.desk && !hadDesk) state.socket.send({ type: "set_status", status: state.status });
    if (queue.status === 200) { state.queue = queue.body.queue; state.queueFetchedAt = Date.now(); }
    else if (queue.status === 404) {
      state.queue = [...state.sessions.values()].filter((s) => s.agent_id === null).map((s) => ({ session_id: s.id, user_id: s.user_id, created_at: s.created_at }));
    }
    $("status-select").hidden = !state.desk;
    document.querySelector("label[for=status-select]").hidden = !state.desk;
    renderLists();
    renderHeader();
  }

  function unreadOf(sid) {
    if (sid === state.current) return 0;
    const session = state.sessions.get(sid);
    return session && session.unread_count ? session.unread_count : 0;
  }

  function waitingText(item) {
    if (item.waiting_seconds === undefined) return "";
    const seconds = Math.max(0, Math.round(item.waiting_seconds + (Date.now() - state.queueFetchedAt) / 1000));
    const m = Math.floor(seconds / 60), s = seconds % 60;
    return `${t("waiting")} ${m}:${String(s).padStart(2, "0")}`;
  }

  function sessionButton(sid, userId, extra) {
    const unread = unreadOf(sid);
    return el("li", {},
      el("button", { type: "button", className: "session", "data-session-id": sid,
                     "aria-current": sid === state.current ? "true" : null, onclick: () => openSession(sid) },
        el("span", { className: "name", text: `#${sid} · ${baseT("customer")} ${userId}` }),
        extra,
        unread ? el("span", { className: "badge", "aria-label": `${unread} ${t("unread")}`, text: unread }) : null));
  }

  /* Rebuild a list only when what it shows changed, and keep the keyboard focus on the same session. */
  function fill(list, items, build) {
    const signature = JSON.stringify([state.current, items.map((i) => [i.id, i.user_id, unreadOf(i.id)])]);
    if (list.dataset.signature === signature) return;
    list.dataset.signature = signature;
    const focused = document.activeElement && list.contains(document.activeElement)
      ? document.activeElement.dataset.sessionId : null;
    list.replaceChildren(...items.map(build));
    if (focused) {
      const again = list.querySelector(`[data-session-id="${focused}"]`);
      if (again) again.focus();
    }
  }

  function renderLists() {
    const queue = state.queue.filter((q) => state.sessions.has(Number(q.session_id)) || state.desk)
      .map((q) => Object.assign({ id: Number(q.session_id) }, q));
    fill($("queue-list"), queue, (q) => sessionButton(q.id, q.user_id,
      el("span", { className: "waiting", "data-waiting": q.id, text: waitingText(q) })));
    const mine = [...state.sessions.values()].filter((s) => Number(s.agent_id) === state.me)
      .map((s) => Object.assign({}, s, { id: Number(s.id) }));
    fill($("mine-list"), mine, (s) => sessionButton(s.id, s.user_id, null));
    $("queue-count").textContent = queue.length;
    $("mine-count").textContent = mine.length;
    $("queue-empty").hidden = queue.length > 0;
    $("mine-empty").hidden = mine.length > 0;
  }

  function renderWaiting() {
    for (const q of state.queue) {
      const node = document.querySelector(`[data-waiting="${Number(q.session_id)}"]`);
      if (node) node.textContent = waitingText(q);
    }
  }

  function labelFor(userId) {
    const session = state.sessions.get(state.current);
    if (session && Number(session.user_id) === userId) return `${baseT("customer")} #${userId}`;
    return `${baseT("agent")} #${userId}`;
  }

  function renderHeader() {
    const sid = state.current;
    const session = sid !== null ? state.sessions.get(sid) : null;
    $("actions").hidden = sid === null;
    if (sid === null) { $("conv-title").textContent = t("pick"); return; }
    $("conv-title").textContent = `${t("session")} #${sid}` + (session ? ` · ${baseT("customer")} ${session.user_id}` : "");
    const open = !state.conversation.closed;
    const mine = session && Number(session.agent_id) === state.me;
    $("claim").hidden = !open || !session || session.agent_id !== null;
    $("transfer").hidden = $("transfer-select").hidden = !open || !mine || !state.desk;
    $("close").hidden = !open;
  }

  async function openSession(sid, keepNotice) {
    if (!keepNotice) notify("");
    state.current = sid;
    document.body.classList.toggle("in-conversation", sid !== null);
    if (sid === null) {
      sessionStorage.removeItem("console.current");
      state.conversation.close();
      $("conv-body").hidden = true;
      state.socket.send({ type: "leave_session" });
    } else {
      sessionStorage.setItem("console.current", String(sid));
      $("conv-body").hidden = false;
      renderHeader();
      const session = state.sessions.get(sid);
      const waiting = state.desk && session && session.agent_id === null;  // claimed first, then joined
      await state.conversation.open(sid, { preview: waiting });
      if (state.desk && Number((state.sessions.get(sid) || {}).agent_id) === state.me) loadAgents();
    }
    renderLists();
    renderHeader();
  }

  function setStatus(status) {
    state.status = status;
    sessionStorage.setItem("console.status", status);
    state.socket.send({ type: "set_status", status });
  }

  function claim() {
    const sid = state.current;
    if (sid === null) return;
    if (state.desk) state.socket.send({ type: "claim_session", session_id: sid });
    else state.conversation.join();  // the legacy desk: the first agent to join or answer gets the session
    setTimeout(refresh, 300);
  }

  async function loadAgents() {
    const { status, body } = await api(state.auth, "GET", "/api/agents");
    if (status !== 200) return;
    const select = $("transfer-select");
    const chosen = select.value;
    const others = body.agents.filter((a) => Number(a.user_id) !== state.me);
    const options = others.map((a) => el("option", {
      value: a.user_id, disabled: a.status !== "online",
      text: `#${a.user_id}${a.display_name ? " " + a.display_name : ""} · ${t(a.status)} · ${a.load}/${a.capacity}`,
    }));
    select.replaceChildren(el("option", { value: "", text: others.length ? t("pickAgent") : t("noAgents") }), ...options);
    if (chosen) select.value = chosen;
  }

  function transfer() {
    const target = Number($("transfer-select").value);
    if (!target || state.current === null) return;
    state.socket.send({ type: "transfer_session", session_id: state.current, agent_id: target });
  }

  async function closeSession() {
    const sid = state.current;
    if (sid === null) return;
    const { status, body } = await api(state.auth, "POST", `/api/sessions/${sid}/close`, {});
    if (status === 200) { state.conversation.setClosed(true); notify(t("closedNotice", { s: sid })); refresh(); }
    else notify(body && body.error || String(status));
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
