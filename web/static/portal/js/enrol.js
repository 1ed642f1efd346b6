// The enrolment page: photo -> challenge -> recording (camera + microphone) -> the server's
// verdict on each point -> the grant form. The server decides everything; this page only
// records and shows. Every text from the server or the person is inserted with textContent.
//
// Test hooks: window.likeness.enrol (state, avatarId, challenge, lastResult, grant, errors,
// timings, and clipBase64() for the last recording).

const API = "/api/consent";
const POINT_LABELS = {
  digits: "Code read aloud",
  head_turns: "Head turns",
  lip_sync: "Lips move with the voice",
  identity: "Same face as the photo, alone",
  nonce: "Fresh, unused code",
  clip: "Recording",
};
const MIME_TYPES = [
  "video/webm;codecs=vp8,opus",
  "video/webm;codecs=vp9,opus",
  "video/webm",
  "video/mp4",
];

/** Seconds to record for a challenge: the code, every turn and some slack (8..30). */
export function recordSeconds(challenge) {
  const digits = String(challenge?.digits ?? "").length;
  const turns = Array.isArray(challenge?.turns) ? challenge.turns.length : 3;
  return Math.min(30, Math.max(8, Math.round(3 + 0.8 * digits + 2.2 * turns)));
}

/** "left" -> "← left", "right" -> "right →" (the person's own left and right). */
export function turnLabel(turn) {
  return turn === "left" ? "← your left" : turn === "right" ? "your right →" : String(turn);
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
  challenge: null,
  lastResult: null,
  grant: null,
  errors: [],
  timings: {},
  lastClip: null,
  recordSeconds,
  async clipBase64() {
    if (!hooks.lastClip) return null;
    const bytes = new Uint8Array(await hooks.lastClip.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  },
};

let csrf = "";
let recorder = null;
let expiryTimer = null;

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
  const pending = await api("GET", `/enrol/challenge${forWhom("?")}`);
  if (pending.ok && pending.data?.nonce) {
    hooks.challenge = pending.data;
    hooks.avatarId = pending.data.avatar_id ?? hooks.avatarId;
    const left = Math.max(0, Math.round(pending.data.expires_at - Date.now() / 1000));
    $("resume-text").textContent =
      `A check you started is still open for about ${left} seconds. Resume it to record now, ` +
      "or start over with your photo.";
    show("resume-panel");
    setState("resumable", "You have an unfinished check.");
    return;
  }
  choosePhoto();
}

function choosePhoto() {
  show("resume-panel", false);
  show("challenge-panel", false);
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

// ---- challenge ---------------------------------------------------------------------------

async function newChallenge() {
  if (!hooks.avatarId) {
    choosePhoto();
    return;
  }
  setState("requesting", "Asking the server for a code…");
  const res = await api("POST", `/enrol/challenge${forWhom("?")}`, {
    json: { avatar_id: hooks.avatarId },
  });
  if (!res.ok) {
    fail("challenge", errorText(res, "No code could be issued"));
    return;
  }
  hooks.challenge = res.data;
  showChallenge();
}

function showChallenge() {
  const c = hooks.challenge;
  show("resume-panel", false);
  show("photo-panel", false);
  show("result-panel", false);
  show("grant-panel", false);
  show("challenge-panel");
  $("digits").textContent = String(c.digits).split("").join(" ");
  const list = $("turns");
  list.replaceChildren();
  c.turns.forEach((turn, i) => {
    const item = document.createElement("li");
    item.textContent = `${i + 1}. ${turnLabel(turn)}`;
    list.append(item);
  });
  $("instructions").textContent = c.instructions ?? "";
  $("record").disabled = false;
  $("record").hidden = false;
  $("stop").hidden = true;
  show("progress-wrap", false);
  tickExpiry();
  clearInterval(expiryTimer);
  expiryTimer = setInterval(tickExpiry, 1000);
  setState("challenge", "Read the code, then press Start recording.");
  $("record").focus();
}

function tickExpiry() {
  const c = hooks.challenge;
  if (!c) return;
  const left = Math.round(c.expires_at - Date.now() / 1000);
  const needed = recordSeconds(c) + 3;
  if (hooks.state === "challenge" && left < needed) {
    $("expiry").textContent = "There is too little time left for this code: get a new one.";
    $("record").disabled = true;
    show("result-panel");
    $("verdict").textContent = "";
    $("points").replaceChildren();
    show("again");
    clearInterval(expiryTimer);
    return;
  }
  if (left > 0) $("expiry").textContent = `This code is valid for ${left} more seconds.`;
}

// ---- recording ---------------------------------------------------------------------------

function pickMime() {
  if (typeof MediaRecorder === "undefined") return null;
  return MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type)) ?? "";
}

async function record() {
  const c = hooks.challenge;
  const mime = pickMime();
  if (mime === null || !navigator.mediaDevices?.getUserMedia) {
    fail("media", "This browser cannot record video here: use a recent browser over https.");
    return;
  }
  $("record").disabled = true;
  setState("opening_camera", "Opening the camera and microphone…");
  const t0 = performance.now();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch {
    $("record").disabled = false;
    fail("media", "The camera or microphone could not be opened: allow both, then try again.");
    return;
  }
  hooks.timings.getUserMediaMs = performance.now() - t0;
  const [video] = stream.getVideoTracks();
  const [audio] = stream.getAudioTracks();
  hooks.timings.video = video?.getSettings?.() ?? null;
  hooks.timings.audio = audio?.getSettings?.() ?? null;
  $("preview").srcObject = stream;

  const seconds = recordSeconds(c);
  const chunks = [];
  recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
  recorder.ondataavailable = (event) => {
    if (event.data && event.data.size) chunks.push(event.data);
  };
  const stopped = new Promise((resolve) => {
    recorder.onstop = resolve;
  });
  let startedAt = Date.now() / 1000;
  recorder.onstart = () => {
    startedAt = Date.now() / 1000;
    hooks.timings.recorderStartMs = performance.now() - t0;
  };
  recorder.start(500);
  $("record").hidden = true;
  $("stop").hidden = false;
  show("progress-wrap");
  setState("recording", "Recording: read the code aloud, then turn your head as shown.");
  const began = performance.now();
  const timer = setInterval(() => {
    const done = (performance.now() - began) / 1000;
    $("progress").value = Math.min(100, (100 * done) / seconds);
    $("countdown").textContent = `${Math.max(0, Math.ceil(seconds - done))} s left`;
    if (done >= seconds && recorder.state === "recording") recorder.stop();
  }, 100);
  await stopped;
  clearInterval(timer);
  clearInterval(expiryTimer);
  for (const track of stream.getTracks()) track.stop();
  $("preview").srcObject = null;
  $("stop").hidden = true;
  hooks.timings.recordedS = (performance.now() - began) / 1000;
  const type = (recorder.mimeType || mime || "video/webm").split(";")[0];
  hooks.lastClip = new Blob(chunks, { type });
  await upload(hooks.lastClip, startedAt);
}

function stopRecording() {
  if (recorder && recorder.state === "recording") recorder.stop();
}

async function upload(blob, startedAt) {
  const c = hooks.challenge;
  setState("uploading", "Sending the recording; the server is checking it…");
  $("countdown").textContent = "Checking…";
  const query =
    `?nonce=${encodeURIComponent(c.nonce)}&started_at=${encodeURIComponent(startedAt.toFixed(3))}` +
    forWhom("&");
  const t0 = performance.now();
  const res = await api("POST", `/enrol/clip${query}`, { body: blob, type: blob.type });
  hooks.timings.checkMs = performance.now() - t0;
  show("progress-wrap", false);
  if (!res.ok) {
    const reason = errorText(res, "The recording was not accepted");
    showResult({ passed: false, points: [{ name: "clip", passed: false, reason }] });
    return;
  }
  showResult(res.data);
}

// ---- result and grant --------------------------------------------------------------------

function showResult(result) {
  hooks.lastResult = result;
  if (result.avatar_id) hooks.avatarId = result.avatar_id;
  show("challenge-panel", false);
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
  } else {
    $("verdict").textContent =
      `The check did not pass (${failed} point${failed === 1 ? "" : "s"} failed). ` +
      "Read why below, then try again with a new code.";
    show("again");
    setState("failed", "The check did not pass.");
  }
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
  $("start-check").addEventListener("click", newChallenge);
  $("resume").addEventListener("click", showChallenge);
  $("discard").addEventListener("click", choosePhoto);
  $("record").addEventListener("click", record);
  $("stop").addEventListener("click", stopRecording);
  $("again").addEventListener("click", () => {
    show("again", false);
    if (hooks.avatarId) newChallenge();
    else choosePhoto();
  });
  $("grant-submit").addEventListener("click", giveConsent);
  start().catch((err) => fail("start", `The page could not start: ${err?.message ?? err}`));
}

if (typeof document !== "undefined") wire();
