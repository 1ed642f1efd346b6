// The eldercare kiosk: always on, no controls, large captions, recovers by itself.
//
// URL parameters (each overrides the server's kiosk profile from api/config):
//   avatar=<id>        avatar to animate
//   profile=<name>     kiosk profile on the server (also sent with the offer)
//   deployment=<name>  deployment name sent with the offer
//   volume=<0..1|0..100>  playback volume of the voice
//   scale=<number>     caption size factor (0.5..4; the server's default profile says 1.6)
//   idle=<seconds>     quiet time before the screen-saver look (default 90)
//   reload_after=<n>   reload the page after n failed reconnects in a row (default 20; 0 = never)
//   debug=1            show connection details in the status line
//
// Distress alerts from the server are never shown here (staff are told by the server).
//
// A dead server is noticed within 2 s (heartbeat.js: no heartbeat and no new frame for
// 1.3 s): the badge says "Reconnecting" and the frozen face dims at once; GET health is
// polled and the kiosk reconnects the moment the server is ready again.

import {
  CompanionConnection,
  cutAtHeard,
  likenessHooks,
  loadConfig,
  meter,
  normalizeVolume,
  readParams,
} from "./rtc.js";
import { HealthPoller, Heartbeat } from "./heartbeat.js";

const params = readParams();
const hooks = likenessHooks("kiosk");

const video = document.getElementById("kiosk-video");
const personaEl = document.getElementById("persona-name");
const stateBadge = document.getElementById("state");
const stateText = document.getElementById("state-text");
const userLine = document.getElementById("caption-user");
const replyLine = document.getElementById("caption-reply");
const statusLine = document.getElementById("kiosk-status");
const soundHint = document.getElementById("sound-hint");

const STATE_TEXT = {
  idle: "Starting",
  connecting: "Connecting",
  reconnecting: "Reconnecting",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
  ended: "Starting again",
};
// The server's KioskConfig defaults, used when api/config cannot be read.
const DEFAULTS = { avatar: null, volume: 1, slow_speech: true, caption_scale: 1.6 };
const JS_ERROR_LIMIT = 5; // this many uncaught errors within JS_ERROR_WINDOW_MS -> reload
const JS_ERROR_WINDOW_MS = 2 * 60 * 1000;
const MIN_UPTIME_BEFORE_RELOAD_MS = 60 * 1000;
const CAPTION_CLEAR_MS = 30 * 1000; // clear captions after this long without new words
const MIN_FONT_FACTOR = 0.5; // a long caption may shrink to half size to fit its row
const MAX_REPLY_SENTENCES = 2; // the one being spoken and the one before
const HEALTH_RETRY_GAP_MS = 2000; // a ready /health skips the back-off at most this often

const idleMs = params.num("idle", 90, { min: 5, max: 24 * 3600 }) * 1000;
const reloadAfter = params.num("reload_after", 20, { min: 0, max: 10000 });
const debug = params.bool("debug", false);
const loadedAt = Date.now();

let conn = null;
let heartbeat = null;
let lastHealthRetry = 0;
let lastActivity = Date.now();
let captionTimer = null;
let turnReplies = [];
let reloadScheduled = false;
const jsErrors = [];

hooks.jsErrors = 0;
hooks.idle = false;
hooks.deadAt = null; // Date.now() when the page last showed a dead server
hooks.backAt = null; // Date.now() when it last came back (connected again)

const health = new HealthPoller({
  onReady: () => {
    if (!conn || conn.status !== "reconnecting" || Date.now() - lastHealthRetry < HEALTH_RETRY_GAP_MS) return;
    lastHealthRetry = Date.now();
    conn.retryNow(); // the server is ready: do not wait for the back-off
  },
});

// -- recovery -------------------------------------------------------------------------

function recentReloads() {
  try {
    const now = Date.now();
    const list = JSON.parse(sessionStorage.getItem("likeness.kiosk.reloads") || "[]").filter(
      (t) => now - t < 10 * 60 * 1000,
    );
    return list;
  } catch {
    return [];
  }
}

/** Reloads the page; after several reloads in ten minutes, waits five minutes first. */
function scheduleReload(reason) {
  if (reloadScheduled) return;
  reloadScheduled = true;
  const reloads = recentReloads();
  const uptimeWait = Math.max(0, MIN_UPTIME_BEFORE_RELOAD_MS - (Date.now() - loadedAt));
  const delay = Math.max(uptimeWait, reloads.length >= 3 ? 5 * 60 * 1000 : 2000);
  console.warn(`likeness kiosk: reloading in ${Math.round(delay / 1000)} s (${reason})`);
  hooks.reloadReason = reason;
  setTimeout(() => {
    try {
      sessionStorage.setItem("likeness.kiosk.reloads", JSON.stringify([...reloads, Date.now()]));
    } catch {
      /* storage may be disabled */
    }
    location.reload();
  }, delay);
}

function countJsError() {
  const now = Date.now();
  jsErrors.push(now);
  while (jsErrors.length && now - jsErrors[0] > JS_ERROR_WINDOW_MS) jsErrors.shift();
  hooks.jsErrors += 1;
  if (jsErrors.length >= JS_ERROR_LIMIT) scheduleReload("repeated script errors");
}

window.addEventListener("error", countJsError);
window.addEventListener("unhandledrejection", countJsError);

// -- presentation ---------------------------------------------------------------------

function showState(state) {
  stateBadge.dataset.state = state;
  stateText.textContent = STATE_TEXT[state] ?? state;
}

function showStatus(text) {
  statusLine.textContent = text;
  statusLine.hidden = !text;
}

function markActivity() {
  lastActivity = Date.now();
  setIdle(false);
}

function setIdle(idle) {
  if (hooks.idle === idle) return;
  hooks.idle = idle;
  document.body.classList.toggle("is-idle", idle);
}

function checkIdle() {
  const quiet = !conn || conn.state === "listening" || conn.state === null;
  if (quiet && Date.now() - lastActivity >= idleMs) setIdle(true);
}

/** Sets the text, then shrinks the font until all of it fits the element's row. */
function fitText(el, text) {
  el.style.fontSize = "";
  if (el.textContent !== text) el.textContent = text;
  if (!text) return;
  const base = parseFloat(getComputedStyle(el).fontSize);
  let size = base;
  while (el.scrollHeight > el.clientHeight + 1 && size > base * MIN_FONT_FACTOR) {
    size *= 0.9;
    el.style.fontSize = `${size}px`;
  }
}

function holdCaptions() {
  clearTimeout(captionTimer);
  captionTimer = setTimeout(() => {
    turnReplies = [];
    fitText(userLine, "");
    fitText(replyLine, "");
  }, CAPTION_CLEAR_MS);
}

function onTranscript({ text, final }) {
  markActivity();
  userLine.classList.toggle("partial", !final);
  fitText(userLine, text);
  if (final) {
    turnReplies = [];
    fitText(replyLine, "");
  }
  holdCaptions();
}

function onReply({ text }) {
  markActivity();
  turnReplies.push(text);
  fitText(replyLine, turnReplies.slice(-MAX_REPLY_SENTENCES).join(" "));
  holdCaptions();
}

/** Barge-in: keep what was said before the resident spoke over it. */
function onInterrupted({ heard }) {
  turnReplies = cutAtHeard(turnReplies, heard);
  fitText(replyLine, turnReplies.join(" "));
}

function onState(state) {
  showState(state);
  if (state === "thinking" || state === "speaking") markActivity();
  else if (state === "listening") lastActivity = Date.now(); // quiet time counts from here
}

/** The server went silent (no heartbeat, no frame): say so now, then reconnect. */
function onServerSilent() {
  hooks.deadAt = Date.now();
  showReconnecting();
  showStatus("Just a moment: reconnecting…");
  conn.reconnect("no heartbeat");
}

/** Never "Listening" over a frozen face: the badge says it, the picture dims. */
function showReconnecting() {
  showState("reconnecting");
  document.body.classList.add("is-reconnecting");
}

function onConnectionChange(change) {
  const { status, attempt, delayMs, reason } = change;
  if (status === "connected") heartbeat.connected();
  else heartbeat.disconnected();
  if (status !== "reconnecting") health.stop();
  if (status === "connected") {
    hooks.backAt = Date.now();
    document.body.classList.remove("is-reconnecting");
    showStatus(debug ? `Connected (session ${conn.sessionId ?? "?"})` : "");
    showState(conn.state || "listening");
  } else if (status === "connecting") {
    showState("connecting");
    showStatus("Connecting…");
  } else if (status === "reconnecting") {
    showReconnecting();
    health.start();
    const detail = debug ? ` (attempt ${attempt}, ${reason ?? "retry"}, ${Math.round((delayMs || 0) / 1000)} s)` : "";
    showStatus(`Just a moment: reconnecting…${detail}`);
    if (reloadAfter > 0 && attempt > reloadAfter) scheduleReload(`${attempt - 1} failed reconnects`);
  } else if (status === "failed" || status === "closed") {
    showStatus("Just a moment: restarting…");
    scheduleReload(`connection ${status}`);
  }
}

function onAutoplayBlocked() {
  soundHint.hidden = false;
}

/** Any touch or key: sound on, fullscreen, AudioContext running. */
function onInteraction() {
  meter.resume();
  if (video.muted) {
    video.muted = false;
    video.play().catch(() => {});
  }
  soundHint.hidden = true;
  enterFullscreen();
  markActivity();
}

function enterFullscreen() {
  const root = document.documentElement;
  if (document.fullscreenElement || !root.requestFullscreen) return;
  root.requestFullscreen({ navigationUI: "hide" }).catch(() => {
    /* needs a user gesture, or the browser is already in kiosk mode */
  });
}

let wakeLock = null;
async function keepScreenOn() {
  if (!("wakeLock" in navigator) || document.visibilityState !== "visible" || wakeLock) return;
  try {
    wakeLock = await navigator.wakeLock.request("screen");
    wakeLock.addEventListener("release", () => {
      wakeLock = null;
    });
  } catch {
    wakeLock = null;
  }
}

// -- start ----------------------------------------------------------------------------

async function main() {
  showState("idle");
  showStatus("Starting…");
  const profileName = params.str("profile", "default");  // the server's default kiosk profile
  const config = await loadConfig({ profile: profileName });
  const profile = { ...DEFAULTS, ...((config && config.kiosk) || {}) };
  const persona = config && config.persona && typeof config.persona.name === "string" ? config.persona.name.trim() : "";
  if (persona) {
    personaEl.textContent = persona;
    document.title = `${persona} · AI companion`;
  }

  const avatar = params.str("avatar", profile.avatar || null);
  const volume = params.has("volume") ? normalizeVolume(params.str("volume"), 1) : normalizeVolume(profile.volume, 1);
  const scale = params.num("scale", Number(profile.caption_scale) || DEFAULTS.caption_scale, {
    min: 0.5,
    max: 4,
  });
  document.body.style.setProperty("--caption-scale", String(scale));
  document.body.classList.toggle("slow-speech", Boolean(profile.slow_speech));
  video.volume = volume;
  Object.assign(hooks, { settings: { avatar, profile: profileName, volume, scale, idleMs, reloadAfter } });

  conn = new CompanionConnection({
    page: "kiosk",
    avatar,
    profile: profileName,
    deployment: params.str("deployment"),
    camera: false,
    mediaElement: video,
    reconnectOnEnded: true,
    retryForever: true,
    backoff: { baseMs: 1000, capMs: 30000 },
    onConnectionChange,
    onState,
    onTranscript,
    onReply,
    onInterrupted,
    onAutoplayBlocked,
    onMessage: () => heartbeat.seen(),
    onAlert: () => {
      /* nothing on screen: the server tells staff */
    },
    onError: (err) => {
      if (debug) console.warn("likeness kiosk:", err.code, err.message);
    },
  });
  heartbeat = new Heartbeat({ send: (message) => conn.send(message), onDead: onServerSilent });
  conn.start();
}

for (const type of ["pointerdown", "keydown", "touchstart"]) {
  window.addEventListener(type, onInteraction, { passive: true });
}
document.addEventListener("visibilitychange", keepScreenOn);
window.addEventListener("resize", () => {
  fitText(userLine, userLine.textContent);
  fitText(replyLine, replyLine.textContent);
});
setInterval(checkIdle, 1000);
keepScreenOn(); // fullscreen needs a gesture (onInteraction), or a browser started in kiosk mode
main();
