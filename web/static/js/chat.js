// The chat page: one person talks with the companion in a browser.
//
// URL parameters: autostart=1 (start without pressing Start; needs an autoplay-permissive
// browser), avatar=<id>, deployment=<name>, camera=1 (tick "Share my camera"),
// captions=0 (start with captions hidden).
//
// A dead server is noticed within 2 s (heartbeat.js: no heartbeat and no new frame for
// 1.3 s): the page says the connection was lost and offers "Reconnect now" while it
// retries with back-off.

import { CompanionConnection, cutAtHeard, likenessHooks, loadConfig, meter, readParams } from "./rtc.js";
import { Heartbeat } from "./heartbeat.js";

const params = readParams();
const hooks = likenessHooks("chat");

const video = document.getElementById("companion-video");
const selfView = document.getElementById("self-view");
const nameEl = document.getElementById("companion-name");
const replySpeaker = document.getElementById("caption-reply-speaker");
const connBox = document.getElementById("conn");
const connStatus = document.getElementById("conn-status");
const retryNow = document.getElementById("retry-now");
const stateBadge = document.getElementById("state");
const stateText = document.getElementById("state-text");
const startOverlay = document.getElementById("start-overlay");
const startButton = document.getElementById("start");
const soundButton = document.getElementById("sound-button");
const muteButton = document.getElementById("mute");
const endButton = document.getElementById("end");
const cameraBox = document.getElementById("camera");
const captionsToggle = document.getElementById("captions-toggle");
const captions = document.getElementById("captions");
const userFinal = document.getElementById("caption-user-final");
const userPartial = document.getElementById("caption-user-partial");
const reply = document.getElementById("caption-reply");
const notice = document.getElementById("notice");
const noticeDismiss = document.getElementById("notice-dismiss");
const metricsList = document.getElementById("metrics-list");

const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting",
  reconnecting: "Reconnecting",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
  ended: "Ended",
};
const MAX_REPLY_SENTENCES = 2;

let conn = null;
let heartbeat = null;
let everConnected = false; // this conversation: "connection lost" vs "cannot reach"
let personaName = "Companion";
let turnReplies = [];

// -- captions -------------------------------------------------------------------------

function setCaptionsVisible(visible) {
  captions.hidden = !visible;
  captionsToggle.setAttribute("aria-pressed", String(visible));
  captionsToggle.textContent = visible ? "Captions on" : "Captions off";
  try {
    localStorage.setItem("likeness.captions", visible ? "1" : "0");
  } catch {
    /* storage may be disabled */
  }
}

function initialCaptions() {
  if (params.has("captions")) return params.bool("captions", true);
  try {
    return localStorage.getItem("likeness.captions") !== "0";
  } catch {
    return true;
  }
}

function showTranscript({ text, final }) {
  if (final) {
    userPartial.textContent = "";
    userFinal.textContent = text;
    turnReplies = [];
    reply.textContent = "";
  } else {
    userFinal.textContent = "";
    userPartial.textContent = text;
  }
}

/** Barge-in: the caption keeps only what was said before the user spoke over it. */
function showInterrupted({ heard }) {
  turnReplies = cutAtHeard(turnReplies, heard);
  reply.textContent = turnReplies.join(" ");
  reply.scrollTop = reply.scrollHeight;
}

function showReply({ text }) {
  turnReplies.push(text);
  reply.textContent = turnReplies.slice(-MAX_REPLY_SENTENCES).join(" ");
  reply.scrollTop = reply.scrollHeight;
}

// -- state and status -----------------------------------------------------------------

function showState(state) {
  stateBadge.dataset.state = state;
  stateText.textContent = STATE_TEXT[state] ?? state;
}

function seconds(ms) {
  return Math.max(1, Math.round(ms / 1000));
}

function showStatus(change) {
  const { status, attempt, delayMs, error } = change;
  connBox.dataset.status = status;
  retryNow.hidden = !(status === "reconnecting" && delayMs > 0);
  let text = "";
  switch (status) {
    case "connecting":
      text = "Connecting…";
      break;
    case "connected":
      text = "Connected";
      break;
    case "reconnecting": {
      const why = everConnected ? "Connection lost." : "Cannot reach the companion.";
      text = delayMs > 0
        ? `${why} Reconnecting in ${seconds(delayMs)} s (attempt ${attempt})…`
        : `Reconnecting (attempt ${attempt})…`;
      break;
    }
    case "ended":
      text = "The conversation has ended.";
      break;
    case "failed":
      text = `Could not connect${error ? `: ${error.message}` : "."}`;
      break;
    default:
      text = "Not connected";
  }
  connStatus.textContent = text;
}

function setRunning(running) {
  startOverlay.hidden = running;
  muteButton.disabled = !running;
  endButton.disabled = !running;
  cameraBox.disabled = running;
  if (!running) {
    muteButton.setAttribute("aria-pressed", "false");
    muteButton.textContent = "Mute";
    soundButton.hidden = true;
    selfView.hidden = true;
    selfView.srcObject = null;
  }
}

/** The server went silent (no heartbeat, no frame): say so and offer to reconnect. */
function onServerSilent() {
  hooks.deadAt = Date.now();
  showState("reconnecting");
  if (conn) conn.reconnect("no heartbeat");
}

function onConnectionChange(change) {
  if (heartbeat && change.status === "connected") heartbeat.connected();
  else if (heartbeat) heartbeat.disconnected();
  if (change.status === "connected") everConnected = true;
  showStatus(change);
  if (change.status === "connected") {
    showState(conn && conn.state ? conn.state : "listening");
    const local = conn && conn.localStream;
    if (local && local.getVideoTracks().length) {
      selfView.srcObject = local;
      selfView.hidden = false;
    }
  } else if (change.status === "connecting") {
    showState("connecting");
  } else if (change.status === "reconnecting") {
    showState(everConnected ? "reconnecting" : "connecting");
  } else if (["ended", "failed", "closed"].includes(change.status)) {
    showState(change.status === "ended" ? "ended" : "idle");
    conn = null;
    setRunning(false);
    startButton.textContent = "Start again";
    if (change.status === "failed") startButton.focus();
  }
}

function showMetrics(stages) {
  metricsList.replaceChildren();
  const entries = Object.entries(stages);
  if (!entries.length) {
    const dt = document.createElement("dt");
    dt.textContent = "No stages reported";
    metricsList.append(dt, document.createElement("dd"));
    return;
  }
  for (const [name, ms] of entries) {
    const dt = document.createElement("dt");
    dt.textContent = name.replaceAll("_", " ");
    const dd = document.createElement("dd");
    dd.textContent = Number.isFinite(Number(ms)) ? `${Math.round(Number(ms))} ms` : String(ms);
    metricsList.append(dt, dd);
  }
}

// -- actions --------------------------------------------------------------------------

function start() {
  if (conn) return;
  meter.resume(); // inside the click: lets the AudioContext run where autoplay rules apply
  turnReplies = [];
  userFinal.textContent = userPartial.textContent = reply.textContent = "";
  setRunning(true);
  everConnected = false;
  conn = new CompanionConnection({
    page: "chat",
    avatar: params.str("avatar"),
    deployment: params.str("deployment"),
    camera: cameraBox.checked,
    mediaElement: video,
    reconnectOnEnded: false,
    maxReconnectAttempts: 8,
    backoff: { baseMs: 1000, capMs: 15000 },
    onConnectionChange,
    onState: showState,
    onTranscript: showTranscript,
    onReply: showReply,
    onInterrupted: showInterrupted,
    onMetrics: showMetrics,
    onAlert: () => {
      notice.hidden = false;
    },
    onError: (err) => {
      if (err.code === "server" || err.code === "camera") console.warn("likeness:", err.message);
    },
    onAutoplayBlocked: () => {
      soundButton.hidden = false;
    },
    onMessage: () => heartbeat && heartbeat.seen(),
  });
  const current = conn;
  heartbeat = new Heartbeat({ send: (message) => current.send(message), onDead: onServerSilent });
  conn.start();
}

function toggleMute() {
  if (!conn) return;
  const muted = !conn.muted;
  conn.setMuted(muted);
  muteButton.setAttribute("aria-pressed", String(muted));
  muteButton.textContent = muted ? "Unmute" : "Mute";
}

async function end() {
  if (!conn) return;
  const current = conn;
  endButton.disabled = true;
  await current.end();
}

function turnOnSound() {
  video.muted = false;
  meter.resume();
  video.play().catch(() => {});
  soundButton.hidden = true;
}

// -- wiring ---------------------------------------------------------------------------

startButton.addEventListener("click", start);
muteButton.addEventListener("click", toggleMute);
endButton.addEventListener("click", end);
soundButton.addEventListener("click", turnOnSound);
retryNow.addEventListener("click", () => conn && conn.retryNow());
captionsToggle.addEventListener("click", () => setCaptionsVisible(captions.hidden));
noticeDismiss.addEventListener("click", () => {
  notice.hidden = true;
});
window.addEventListener("pagehide", () => {
  if (!conn) return;
  conn.send({ type: "end" }); // best effort: the page is going away
  conn.close();
});

cameraBox.checked = params.bool("camera", false);
setCaptionsVisible(initialCaptions());
showState("idle");
setRunning(false);

loadConfig().then((config) => {
  const name = config && config.persona && typeof config.persona.name === "string" ? config.persona.name.trim() : "";
  if (!name) return;
  personaName = name;
  nameEl.textContent = personaName;
  replySpeaker.textContent = personaName;
  document.title = `${personaName} · likeness`;
  hooks.personaName = personaName;
});

if (params.bool("autostart", false)) start();
