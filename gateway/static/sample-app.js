// pushline sample app: a browser app speaking docs/inapp.md. No framework and no build step:
// what an app developer reads to see the protocol in use.
//
// 1. Sign in: register this browser's in-app device with the registry
//    (PUT /v1/devices/{device id}, platform "inapp"), and its Web Push subscription where the
//    browser has a push service (never required: the page works without it).
// 2. Open the live connection (hello → ready), show each message as it arrives and ack it.
// 3. Keep the inbox: list it, show the unread count, mark read, delete, mark all read, answer
//    prompts (receipt frames), and follow inbox.changed from the person's other devices.
"use strict";

(() => {
  const DEVICE_KEY = "pushline.sample.device_id";
  const PAGE_SIZE = 20;
  const PUSH_TIMEOUT_MS = 8000;
  const RECONNECT_MAX_MS = 10000;
  // Closing codes after which reconnecting cannot help (docs/inapp.md, "Closing codes").
  const FINAL_CLOSES = new Set([4001, 4003, 4008, 4011]);

  const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);
  const form = $("sign-in-form");
  const params = new URLSearchParams(location.search);

  /** What the session knows: the settings signed in with, the connection and the inbox. */
  const session = {
    config: null,
    ws: null,
    signedIn: false,
    reconnectDelay: 500,
    reconnectTimer: null,
    nextRef: 1,
    pending: new Map(), // ref → what it was for
    live: new Map(), // message id → element
    inbox: { messages: [], nextCursor: null, listing: false, stale: false },
    answered: new Map(), // event id → action id
  };

  // --- the form ------------------------------------------------------------------------

  function deviceId() {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id) {
      id = newDeviceId();
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  }

  function newDeviceId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function defaults() {
    const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
    form.registry.value = params.get("registry") || `${location.protocol}//${location.hostname}:8081`;
    form.gateway.value = params.get("gateway") || `${wsScheme}//${location.host}`;
    form.app.value = params.get("app") || "";
    form.token.value = params.get("token") || "";
    form.person.value = params.get("person") || subjectOf(form.token.value);
    form.device.value = deviceId();
    form.vapid.value = params.get("vapid") || "";
    form.webpush_app.value = params.get("webpush_app") || "";
  }

  /** The `sub` of a JWT, or "" (the token is the registry's business; this only fills a field). */
  function subjectOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || "";
    } catch (_) {
      return "";
    }
  }

  function readForm() {
    return {
      registry: form.registry.value.trim().replace(/\/+$/, ""),
      gateway: form.gateway.value.trim().replace(/\/+$/, ""),
      app: form.app.value.trim(),
      token: form.token.value.trim(),
      person: form.person.value.trim() || subjectOf(form.token.value.trim()),
      device: form.device.value,
      vapid: form.vapid.value.trim(),
      webpushApp: form.webpush_app.value.trim(),
    };
  }

  // --- what the page shows about itself --------------------------------------------------

  function setState(state, text) {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = text || state.replace("-", " ");
  }

  function setPush(text) {
    $("push-state").textContent = text;
  }

  function showError(text) {
    const el = $("last-error");
    el.hidden = !text;
    el.textContent = text || "";
    if (text) console.warn(text);
  }

  function log(direction, frame) {
    const shown = { ...frame };
    if (shown.credential) shown.credential = "…";
    const el = $("log");
    const lines = el.textContent ? el.textContent.split("\n") : [];
    lines.push(`${new Date().toISOString().slice(11, 23)} ${direction} ${JSON.stringify(shown)}`);
    el.textContent = lines.slice(-200).join("\n");
  }

  function setSignedIn(on) {
    session.signedIn = on;
    $("sign-in").disabled = on;
    $("sign-out").disabled = !on;
    $("new-device").disabled = on;
    for (const id of ["mark-all-read", "refresh-inbox"]) $(id).disabled = !on;
  }

  // --- the registry ------------------------------------------------------------------------

  async function registry(method, path, body) {
    const { config } = session;
    const response = await fetch(config.registry + path, {
      method,
      headers: { authorization: `Bearer ${config.token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let code = "";
      try {
        const answer = await response.json();
        code = typeof answer.error === "string" ? answer.error : (answer.error && answer.error.code) || "";
      } catch (_) {
        // no JSON body: the status says enough
      }
      throw new Error(`${method} ${path}: ${response.status} ${code}`.trim());
    }
    return response.status === 204 ? null : response.json();
  }

  function registerInApp() {
    const { config } = session;
    return registry("PUT", `/v1/devices/${encodeURIComponent(config.device)}`, {
      person_id: config.person,
      platform: "inapp",
      app: config.app,
      device_id: config.device,
    });
  }

  // --- Web Push: where the browser allows, never required ---------------------------------

  function withTimeout(promise, ms, what) {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
    });
    return Promise.race([promise, late]).finally(() => clearTimeout(timer));
  }

  function base64UrlBytes(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  async function registerPush() {
    const { config } = session;
    if (!config.vapid) return setPush("skipped: no VAPID public key given");
    if (!window.isSecureContext || !("serviceWorker" in navigator) || !("PushManager" in window)) {
      return setPush("skipped: this browser has no Web Push here (it needs a secure context)");
    }
    setPush("subscribing…");
    try {
      const registration = await withTimeout(
        navigator.serviceWorker.register("/sample-app-sw.js"),
        PUSH_TIMEOUT_MS,
        "the service worker",
      );
      await withTimeout(navigator.serviceWorker.ready, PUSH_TIMEOUT_MS, "the service worker");
      const subscription = await withTimeout(
        registration.pushManager.subscribe({
          userVisibleOnly: true,
          applicationServerKey: base64UrlBytes(config.vapid),
        }),
        PUSH_TIMEOUT_MS,
        "the browser's push service",
      );
      const body = {
        person_id: config.person,
        platform: "webpush",
        device_id: config.device,
        subscription: subscription.toJSON(),
      };
      if (config.webpushApp) body.app = config.webpushApp;
      await registry("POST", "/v1/devices", body);
      setPush(`subscribed at ${new URL(subscription.endpoint).host}`);
    } catch (error) {
      setPush(`skipped: ${error.message || error}`);
    }
  }

  // --- the live connection ------------------------------------------------------------------

  function send(frame, purpose) {
    const { ws } = session;
    if (!ws || ws.readyState !== WebSocket.OPEN) return null;
    if (purpose) {
      frame.ref = String(session.nextRef++);
      session.pending.set(frame.ref, purpose);
    }
    log("→", frame);
    ws.send(JSON.stringify(frame));
    return frame.ref || null;
  }

  function connect() {
    const { config } = session;
    clearTimeout(session.reconnectTimer);
    setState("connecting");
    const ws = new WebSocket(`${config.gateway}/v1/connect`);
    session.ws = ws;
    ws.onopen = () => {
      send({ type: "hello", credential: config.token, app: config.app, device_id: config.device });
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        return showError("the gateway sent something that is not JSON");
      }
      log("←", frame);
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (session.ws !== ws) return;
      session.ws = null;
      session.pending.clear();
      session.inbox.listing = false;
      if (!session.signedIn) return;
      const reason = event.reason || "connection lost";
      if (FINAL_CLOSES.has(event.code)) {
        setState("closed", `closed: ${reason} (${event.code})`);
        return;
      }
      setState("closed", `closed: ${reason} (${event.code}); reconnecting`);
      session.reconnectTimer = setTimeout(connect, session.reconnectDelay);
      session.reconnectDelay = Math.min(session.reconnectDelay * 2, RECONNECT_MAX_MS);
    };
  }

  function onFrame(frame) {
    const purpose = frame.ref ? session.pending.get(frame.ref) : undefined;
    if (frame.ref) session.pending.delete(frame.ref);
    switch (frame.type) {
      case "ready":
        session.reconnectDelay = 500;
        setState("ready");
        $("person").textContent = frame.person_id;
        listInbox(null);
        break;
      case "message":
        showLive(frame);
        send({ type: "ack", seq: frame.seq });
        send({ type: "receipt", event_id: frame.event_id, kind: "delivered" }, { kind: "receipt" });
        break;
      case "inbox.page":
        onPage(frame, purpose);
        break;
      case "inbox.count":
      case "inbox.done":
        setUnread(frame.unread);
        break;
      case "inbox.changed":
        setUnread(frame.unread);
        listInbox(null);
        break;
      case "receipt.done":
        if (purpose && purpose.kind === "action") answered(purpose.eventId, purpose.action);
        break;
      case "error":
        onError(frame, purpose);
        break;
      case "pong":
        break;
      default:
        log("?", frame);
    }
  }

  function onError(frame, purpose) {
    if (purpose && purpose.kind === "list" && frame.error === "no_inbox") {
      session.inbox.listing = false;
      $("inbox-state").textContent = "this app keeps no inbox";
      return;
    }
    if (purpose && purpose.kind === "list") session.inbox.listing = false;
    showError(`${purpose ? purpose.kind : "request"} refused: ${frame.error} ${frame.message || ""}`.trim());
  }

  // --- messages ------------------------------------------------------------------------------

  /** An element for a message or an inbox entry: title, body, meta, and a prompt's buttons. */
  function render(eventId, fields) {
    const li = document.getElementById("message-template").content.firstElementChild.cloneNode(true);
    li.dataset.eventId = eventId;
    const { title, body } = describe(fields);
    $("title", li).textContent = title;
    $("body", li).textContent = body;
    const at = fields.at_ms ? new Date(fields.at_ms).toLocaleTimeString() : new Date().toLocaleTimeString();
    $("meta", li).textContent = `${fields.category || fields.class || ""} · ${at}`;
    const actions = $("actions", li);
    for (const action of Array.isArray(fields.actions) ? fields.actions : []) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.testid = "action";
      button.dataset.action = action.id;
      button.textContent = action.title || action.id;
      button.addEventListener("click", () => answer(eventId, action.id));
      actions.appendChild(button);
    }
    if (session.answered.has(eventId)) showAnswered(li, session.answered.get(eventId));
    return li;
  }

  /** Title and body of an in-app payload, or of an inbox entry kept from a push. */
  function describe(fields) {
    const payload = fields.payload;
    if (payload && typeof payload === "object" && !payload.jwe) {
      return {
        title: typeof payload.title === "string" ? payload.title : "(no title)",
        body: typeof payload.body === "string" ? payload.body : "",
      };
    }
    if (payload && payload.jwe) return { title: "(encrypted)", body: "" };
    if (fields.push) return { title: "(a push)", body: JSON.stringify(fields.push).slice(0, 200) };
    return { title: "(empty)", body: "" };
  }

  function showLive(frame) {
    if (session.live.has(frame.id)) return; // delivered again after a reconnection
    const li = render(frame.event_id, frame);
    li.dataset.testid = "live-message";
    li.dataset.id = frame.id;
    $("live-messages").prepend(li);
    session.live.set(frame.id, li);
  }

  function answer(eventId, action) {
    send({ type: "receipt", event_id: eventId, kind: "action", action }, { kind: "action", eventId, action });
    const entry = session.inbox.messages.find((m) => m.id === eventId);
    if (entry && !entry.read) markRead(eventId);
  }

  function answered(eventId, action) {
    session.answered.set(eventId, action);
    for (const li of document.querySelectorAll(".message")) {
      if (li.dataset.eventId === eventId) showAnswered(li, action);
    }
  }

  function showAnswered(li, action) {
    const el = $("answered", li);
    el.hidden = false;
    el.dataset.action = action;
    el.textContent = `answered: ${action}`;
    for (const button of $("actions", li).querySelectorAll("button")) button.disabled = true;
  }

  // --- the inbox ------------------------------------------------------------------------------

  /** Lists the first page (cursor null) or the next; a change while listing lists again after. */
  function listInbox(cursor) {
    const { inbox } = session;
    if (inbox.listing) {
      if (cursor === null) inbox.stale = true;
      return;
    }
    const ref = send({ type: "inbox.list", limit: PAGE_SIZE, cursor, unread_only: false }, { kind: "list", cursor });
    inbox.listing = ref !== null;
  }

  function onPage(frame, purpose) {
    const { inbox } = session;
    inbox.listing = false;
    const first = !purpose || purpose.cursor === null;
    inbox.messages = first ? frame.messages : inbox.messages.concat(frame.messages);
    inbox.nextCursor = frame.next_cursor || null;
    setUnread(frame.unread);
    drawInbox();
    if (inbox.stale) {
      inbox.stale = false;
      listInbox(null);
    }
  }

  function drawInbox() {
    const { inbox } = session;
    const list = $("inbox");
    list.replaceChildren(
      ...inbox.messages.map((entry) => {
        const li = render(entry.id, entry);
        li.dataset.testid = "inbox-message";
        li.dataset.id = entry.id;
        li.dataset.read = String(Boolean(entry.read));
        const controls = li.querySelector(".controls");
        controls.append(
          entry.read
            ? button("mark-unread", "Mark unread", () => inboxOp("inbox.unread", { ids: [entry.id] }))
            : button("mark-read", "Mark read", () => markRead(entry.id)),
          button("delete", "Delete", () => inboxOp("inbox.delete", { ids: [entry.id] })),
        );
        return li;
      }),
    );
    $("inbox-state").textContent = inbox.messages.length ? "" : "no messages";
    $("more").hidden = !inbox.nextCursor;
  }

  function button(testid, text, onClick) {
    const el = document.createElement("button");
    el.type = "button";
    el.dataset.testid = testid;
    el.textContent = text;
    el.addEventListener("click", onClick);
    return el;
  }

  function markRead(eventId) {
    inboxOp("inbox.read", { ids: [eventId] });
    send({ type: "receipt", event_id: eventId, kind: "read" }, { kind: "receipt" });
  }

  function inboxOp(type, selection) {
    send({ type, ...selection }, { kind: type });
  }

  function setUnread(unread) {
    if (typeof unread === "number") $("unread-count").textContent = String(unread);
  }

  // --- signing in and out -------------------------------------------------------------------

  async function signIn(event) {
    if (event) event.preventDefault();
    showError("");
    session.config = readForm();
    const { config } = session;
    if (!config.registry || !config.gateway || !config.app || !config.token || !config.person) {
      setState("error", "error: fill in the registry, the gateway, the app and the token");
      return;
    }
    setSignedIn(true);
    setState("registering");
    try {
      await registerInApp();
    } catch (error) {
      setSignedIn(false);
      setState("error", "error: registration refused");
      showError(`registering the in-app device: ${error.message || error}`);
      return;
    }
    registerPush(); // in the background: the page works without it
    connect();
  }

  async function signOut() {
    setSignedIn(false);
    clearTimeout(session.reconnectTimer);
    if (session.ws) session.ws.close(1000, "signed out");
    session.ws = null;
    try {
      await registry("DELETE", `/v1/devices/${encodeURIComponent(session.config.device)}`);
    } catch (error) {
      showError(`removing the device: ${error.message || error}`);
    }
    setState("signed-out");
  }

  form.addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("new-device").addEventListener("click", () => {
    localStorage.removeItem(DEVICE_KEY);
    form.device.value = deviceId();
  });
  $("mark-all-read").addEventListener("click", () => inboxOp("inbox.read", { all: true }));
  $("refresh-inbox").addEventListener("click", () => listInbox(null));
  $("more").addEventListener("click", () => listInbox(session.inbox.nextCursor));
  form.token.addEventListener("change", () => {
    if (!form.person.value) form.person.value = subjectOf(form.token.value.trim());
  });

  defaults();
  setSignedIn(false);
  if (params.get("autostart") === "1") signIn();
})();
