// The enrolment page: photo -> the live check (camera + microphone over WebRTC; the server
// reveals prompts one at a time on the data channel "ceremony" and judges as media arrives)
// -> the server's verdict on each point -> the grant form. The server decides everything;
// this page only shows prompts and streams. Every text from the server or the person is
// inserted with textContent.
//
// Wire protocol (consent/ceremony/live.py): server -> page {"type": "prompt", id, kind,
// text, digits | direction | colors + durations_ms}; page -> server {"type": "shown", id,
// since_shown_ms} once the prompt is on screen; server -> page {"type": "result", passed,
// liveness_id, avatar_id, points, retry}, then the server hangs up.
//
// Test hooks: window.likeness.enrol (state, avatarId, ceremonyId, rtcConfig, prompts,
// lastResult, grant, errors, timings).

const API = "/api/consent";
const POINT_LABELS = {
  ceremony: "The live check ran to the end",
  digits: "Digits read aloud",
  reaction: "Answered as each prompt appeared",
  head_turns: "Head turns",
  screen_light: "Your face reflected the screen's colours",
  depth: "A real head in 3-D",
  lip_sync: "Lips move with the voice",
  identity: "Same face as the photo, alone",
  continuity: "One unbroken picture",
  nonce: "Fresh, unused check",
  live: "Live",
  clip: "Recording",
  connection: "Connection",
};
const ICE_GATHERING_MS = 5000;

/** "left" -> "LEFT ←", "right" -> "RIGHT →" (the person's own left and right). */
export function turnLabel(turn) {
  return turn === "left" ? "LEFT ←" : turn === "right" ? "RIGHT →" : String(turn).toUpperCase();
}

/** The words a prompt is shown with: digits spaced out, turns in capitals. */
export function promptText(prompt) {
  if (prompt?.kind === "digits") return String(prompt.digits ?? "").split("").join("  ");
  if (prompt?.kind === "turn") return `Turn your head to your ${turnLabel(prompt.direction)}, then back`;
  return "Look at the screen";
}

/** The label above a prompt. */
export function promptLabel(prompt) {
  if (prompt?.kind === "digits") return "Read aloud";
  if (prompt?.kind === "turn") return "Turn your head";
  return "The screen flashes";
}

/** Comma-separated words as a clean list ("a, b ,,c" -> ["a", "b", "c"]). */
export function splitList(text) {
  return String(text ?? "")
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean);
}

/** An ISO time as a readable local date ("26 December 2026"); the text itself if unreadable. */
export function formatDate(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  return at.toLocaleDateString(undefined, { day: "numeric", month: "long", year: "numeric" });
}

const hooks = {
  state: "starting",
  user: null,
  avatarId: null,
  ceremonyId: null,
  rtcConfig: null, // the last peer connection's configuration (POST enrol/ice)
  prompts: [],
  lastResult: null,
  grant: null,
  errors: [],
  timings: {},
};

let csrf = "";
let live = null; // {pc, channel, stream} of the running check

const $ = (id) => document.getElementById(id);

/** The `subject` a guardian acts for (`enrol.html?subject=<id>`), as a query part. */
function forWhom(joiner) {
  const subject = new URLSearchParams(location.search).get("subject");
  return subject ? `${joiner}subject=${encodeURIComponent(subject)}` : "";
}

function setState(name, message) {
  hooks.state = name;
  document.body.dataset.state = name;
  if (message !== undefined) $("status").textContent = message;
}

function fail(code, message) {
  hooks.errors.push({ code, message });
  setState("error", message);
}

function show(id, visible = true) {
  $(id).hidden = !visible;
}

async function api(method, path, { json, body, type } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  } else if (type) {
    headers["Content-Type"] = type;
  }
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
    });
  } catch (err) {
    const error = "The server cannot be reached: check the connection.";
    return { ok: false, status: 0, data: { error } };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { ok: response.ok, status: response.status, data };
}

function errorText(res, fallback) {
  const said = res.data && typeof res.data.error === "string" ? res.data.error : "";
  if (res.status === 401) return "You are signed out: sign in again, then come back to this page.";
  if (res.status === 429) return said || "Too many attempts: wait a while, then try again.";
  return said || `${fallback} (the server answered ${res.status}).`;
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  const me = await api("GET", "/auth/me");
  if (me.status === 401 || !me.ok) {
    show("signin-needed");
    setState("signed_out", "You are not signed in.");
    return;
  }
  csrf = me.data?.csrf_token ?? "";
  hooks.user = me.data;
  choosePhoto();
}

function choosePhoto() {
  show("ceremony-panel", false);
  show("result-panel", false);
  show("grant-panel", false);
  show("photo-panel");
  setState("choose_photo", "Choose your photo to begin.");
}

// ---- photo -------------------------------------------------------------------------------

async function onPhoto() {
  const file = $("photo").files?.[0];
  $("start-check").disabled = true;
  hooks.avatarId = null;
  if (!file) return;
  const preview = $("photo-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  if (!["image/jpeg", "image/png"].includes(file.type)) {
    $("photo-result").textContent = "This file is not a JPEG or PNG photo: choose a photo.";
    setState("photo_refused", "The photo was not accepted.");
    return;
  }
  setState("checking_photo", "Checking the photo…");
  $("photo-result").textContent = "Looking for your face…";
  const res = await api("POST", `/enrol/photo${forWhom("?")}`, { body: file, type: file.type });
  if (!res.ok) {
    $("photo-result").textContent = errorText(res, "The photo was not accepted");
    hooks.errors.push({ code: "photo", message: $("photo-result").textContent });
    setState("photo_refused", "The photo was not accepted.");
    return;
  }
  hooks.avatarId = res.data.avatar_id;
  $("photo-result").textContent = "One face found. You can start the live check.";
  $("start-check").disabled = false;
  setState("photo_ok", "Photo accepted.");
}

// ---- the live check ----------------------------------------------------------------------

/** Resolves once ICE gathering is complete (or after `timeoutMs`, with what was gathered). */
function iceGathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(false), timeoutMs);
    function done(complete) {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      resolve(complete);
    }
    function onState() {
      if (pc.iceGatheringState === "complete") done(true);
    }
    pc.addEventListener("icegatheringstatechange", onState);
  });
}

/**
 * The peer connection's configuration (POST enrol/ice): STUN/TURN servers with fresh
 * credentials, relay-only where the server says so. A server without the route is
 * reached directly. {ok, config} or {ok: false, reason}.
 */
async function peerConfig() {
  const res = await api("POST", `/enrol/ice${forWhom("?")}`);
  if ([404, 405].includes(res.status)) return { ok: true, config: { iceServers: [] } };
  if (!res.ok || !Array.isArray(res.data?.iceServers)) {
    return { ok: false, reason: errorText(res, "The connection could not be set up") };
  }
  const policy = res.data.iceTransportPolicy === "relay" ? "relay" : "all";
  return { ok: true, config: { iceServers: res.data.iceServers, iceTransportPolicy: policy } };
}

async function startCeremony() {
  if (!hooks.avatarId) {
    choosePhoto();
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia || typeof RTCPeerConnection === "undefined") {
    fail("media", "This browser cannot run the live check here: use a recent browser over https.");
    return;
  }
  show("photo-panel", false);
  show("result-panel", false);
  show("grant-panel", false);
  show("ceremony-panel");
  $("start-check").disabled = true;
  $("prompt").textContent = "";
  $("prompt-label").textContent = "What to do now";
  hooks.prompts = [];
  hooks.lastResult = null;
  hooks.timings = {};
  setState("opening_camera", "Opening the camera and microphone…");
  const t0 = performance.now();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch {
    $("start-check").disabled = false;
    stopCeremony();
    fail("media", "The camera or microphone could not be opened: allow both, then try again.");
    return;
  }
  hooks.timings.getUserMediaMs = performance.now() - t0;
  $("preview").srcObject = stream;
  setState("connecting", "Connecting to the server…");
  const rtc = await peerConfig();
  if (!rtc.ok) {
    for (const track of stream.getTracks()) track.stop();
    $("preview").srcObject = null;
    $("start-check").disabled = false;
    showResult({ passed: false, points: [{ name: "connection", passed: false, reason: rtc.reason }] });
    return;
  }
  hooks.rtcConfig = rtc.config;
  const pc = new RTCPeerConnection(rtc.config);
  const channel = pc.createDataChannel("ceremony");
  live = { pc, channel, stream, ended: false };
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  channel.addEventListener("message", (event) => onMessage(event.data));
  pc.addEventListener("connectionstatechange", () => {
    if (["failed", "closed"].includes(pc.connectionState) && live?.pc === pc && !live.ended) {
      showResult({
        passed: false,
        points: [
          {
            name: "connection",
            passed: false,
            reason: "The connection to the server was lost: check your network, then start again.",
          },
        ],
      });
    }
  });
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc, ICE_GATHERING_MS);
  const res = await api("POST", `/enrol/ceremony${forWhom("?")}`, {
    json: { avatar_id: hooks.avatarId, sdp: pc.localDescription.sdp, type: "offer" },
  });
  if (!res.ok) {
    const reason = errorText(res, "The live check could not start");
    stopCeremony();
    showResult({ passed: false, points: [{ name: "ceremony", passed: false, reason }] });
    return;
  }
  hooks.ceremonyId = res.data.ceremony_id;
  await pc.setRemoteDescription({ type: "answer", sdp: res.data.sdp });
  hooks.timings.connectMs = performance.now() - t0;
  setState("live", "The live check is running: look at the camera and wait for a prompt.");
  $("prompt").textContent = "Look at the camera…";
}

function onMessage(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return;
  }
  if (message?.type === "prompt") showPrompt(message);
  else if (message?.type === "result") {
    hooks.timings.resultAt = performance.now();
    stopCeremony();
    showResult(message);
  }
}

function sendShown(id, paintedAt) {
  const since = Math.max(0, performance.now() - paintedAt);
  if (live?.channel?.readyState === "open") {
    live.channel.send(JSON.stringify({ type: "shown", id, since_shown_ms: since }));
  }
}

function showPrompt(prompt) {
  hooks.prompts.push(prompt);
  $("prompt-label").textContent = promptLabel(prompt);
  $("prompt").textContent = promptText(prompt);
  setState("prompt", prompt.text ?? promptText(prompt));
  if (prompt.kind === "flash") {
    flash(prompt);
    return;
  }
  // Shown on the next frame painted: acknowledge it then.
  requestAnimationFrame(() => requestAnimationFrame(() => sendShown(prompt.id, performance.now())));
}

/** Fill the whole viewport with each colour for its duration; acknowledge the first paint. */
function flash(prompt) {
  const colors = Array.isArray(prompt.colors) ? prompt.colors : [];
  const durations = Array.isArray(prompt.durations_ms) ? prompt.durations_ms : [];
  const overlay = $("flash");
  Object.assign(overlay.style, {
    position: "fixed",
    inset: "0",
    zIndex: "1000",
    cursor: "none",
  });
  const colorAt = (elapsed) => {
    let edge = 0;
    for (let i = 0; i < colors.length; i += 1) {
      edge += Number(durations[i]) || 0;
      if (elapsed < edge) return colors[i];
    }
    return null;
  };
  const css = ([r, g, b]) => `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
  let paintedAt = null;
  overlay.style.background = colors.length ? css(colors[0]) : "black";
  overlay.hidden = false;
  const step = () => {
    const now = performance.now();
    if (paintedAt === null) {
      // The first colour was set in the previous frame: it is on the screen now.
      paintedAt = now;
      hooks.timings[`flash${prompt.id}PaintedAt`] = paintedAt;
      sendShown(prompt.id, paintedAt);
    }
    const color = colorAt(now - paintedAt);
    if (color === null || !live) {
      overlay.hidden = true;
      overlay.style.background = "";
      return;
    }
    overlay.style.background = css(color);
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

function stopCeremony() {
  if (!live) return;
  live.ended = true;
  for (const track of live.stream?.getTracks?.() ?? []) track.stop();
  try {
    live.channel?.close();
    live.pc?.close();
  } catch {
    /* already closed */
  }
  $("preview").srcObject = null;
  $("flash").hidden = true;
  live = null;
}

// ---- result and grant --------------------------------------------------------------------

function showResult(result) {
  hooks.lastResult = result;
  if (result.avatar_id) hooks.avatarId = result.avatar_id;
  if (live) live.ended = true;
  show("ceremony-panel", false);
  show("result-panel");
  const list = $("points");
  list.replaceChildren();
  for (const point of result.points ?? []) {
    const item = document.createElement("li");
    item.className = point.passed ? "point point-pass" : "point point-fail";
    item.dataset.point = point.name;
    item.dataset.passed = String(Boolean(point.passed));
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = point.passed ? "✓" : "✗";
    const name = document.createElement("strong");
    const label = POINT_LABELS[point.name] ?? point.name;
    name.textContent = `${label}: ${point.passed ? "passed" : "not passed"}. `;
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = point.reason ?? "";
    item.append(mark, " ", name, reason);
    list.append(item);
  }
  const failed = (result.points ?? []).filter((p) => !p.passed).length;
  if (result.passed) {
    $("verdict").textContent =
      "The check passed: every point holds. You can now give your consent.";
    show("again", false);
    show("grant-panel");
    setState("passed", "The check passed.");
  } else if (result.retry) {
    $("verdict").textContent =
      "We could not judge the light of your screen on your face. Turn the screen brightness " +
      "up, sit a little closer, or dim the room's lights, then try again.";
    show("grant-panel", false);
    show("again");
    setState("retry", "The check could not be judged: try again.");
  } else {
    $("verdict").textContent =
      `The check did not pass (${failed} point${failed === 1 ? "" : "s"} failed). ` +
      "Read why below, then start the live check again.";
    show("grant-panel", false);
    show("again");
    setState("failed", "The check did not pass.");
  }
  $("start-check").disabled = !hooks.avatarId;
  $("result-title").focus();
}

async function giveConsent() {
  const result = hooks.lastResult;
  if (!result?.passed) return;
  const days = Number($("expires-days").value);
  const body = {
    avatar_id: hooks.avatarId,
    liveness_id: result.liveness_id,
    allow_voice: $("allow-voice").checked,
    deployments: splitList($("deployments").value),
    purposes: splitList($("purposes").value),
    expires_days: Number.isFinite(days) ? Math.round(days) : 30,
  };
  const subject = new URLSearchParams(location.search).get("subject");
  if (subject) body.subject = subject;
  if (!body.deployments.length || !body.purposes.length) {
    $("grant-result").textContent = "Name at least one deployment and one purpose.";
    return;
  }
  $("grant-submit").disabled = true;
  setState("granting", "Recording your consent…");
  const res = await api("POST", "/grants", { json: body });
  if (!res.ok) {
    $("grant-submit").disabled = false;
    $("grant-result").textContent = errorText(res, "Your consent could not be recorded");
    hooks.errors.push({ code: "grant", message: $("grant-result").textContent });
    setState("passed", "The consent was not recorded.");
    return;
  }
  const grant = res.data?.grant ?? res.data;
  hooks.grant = grant;
  const until = grant?.expires_at ? ` It is valid until ${formatDate(grant.expires_at)}.` : "";
  $("grant-result").textContent =
    `Your consent was recorded.${until} You can review or revoke it on My grants.`;
  setState("granted", "Your consent was recorded.");
}

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  window.likeness = window.likeness || {};
  window.likeness.enrol = hooks;
  $("photo").addEventListener("change", onPhoto);
  $("start-check").addEventListener("click", startCeremony);
  $("cancel").addEventListener("click", () => {
    stopCeremony();
    showResult({
      passed: false,
      points: [{ name: "ceremony", passed: false, reason: "You stopped the live check." }],
    });
  });
  $("again").addEventListener("click", () => {
    show("again", false);
    if (hooks.avatarId) startCeremony();
    else choosePhoto();
  });
  $("grant-submit").addEventListener("click", giveConsent);
  start().catch((err) => fail("start", `The page could not start: ${err?.message ?? err}`));
}

if (typeof document !== "undefined") wire();
