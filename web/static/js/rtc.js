// likeness WebRTC client: one conversation with a companion over a peer connection.
//
// Signaling is non-trickle: the offer is POSTed once ICE gathering is complete and the
// answer carries every server candidate.
//
//   POST api/rtc/ice -> 200 {iceServers, iceTransportPolicy, expires_at} before each
//     connection (TURN credentials are minted per connection and expire); 404/405/501
//     (a server without the route) falls back to options.iceServers; 429/503 are
//     retried like the offer.
//   POST api/rtc/offer {sdp, type: "offer", avatar?, deployment?, profile?}
//     -> 200 {sdp, type: "answer", session_id}
//     -> 4xx/5xx {error}; 503 comes with Retry-After
//
// Media: the microphone goes up (camera optional), one audio track (the voice) and one
// video track (the face) come down. Events come down a data channel named "events" that
// the client opens before the offer; see CompanionConnection._onMessage for the shapes.
//
// Usage: make a CompanionConnection with handlers, call start(); it reconnects by itself
// with exponential back-off until end() or close(). Pages import everything from here:
// util.js (pure helpers) and media.js (playback, meters, window.likeness) are re-exported.

import { asCompanionError, backoffDelay, CompanionError, parseRetryAfter } from "./util.js";
import { likenessHooks, meter, playMedia } from "./media.js";

export * from "./util.js";
export * from "./media.js";

/** Companion states the server reports; anything else is shown as-is. */
export const STATES = Object.freeze(["listening", "thinking", "speaking", "ended"]);

/** Connection statuses reported through onConnectionChange. */
export const STATUSES = Object.freeze([
  "idle", // not started
  "connecting", // first attempt in progress
  "connected", // data channel open, media flowing
  "reconnecting", // lost or failed; waiting delayMs (or attempting when delayMs is 0)
  "ended", // the conversation ended (by the user or the server); no reconnect
  "failed", // gave up: a non-retryable error or too many attempts
  "closed", // close() was called
]);

const DEFAULT_OPTIONS = Object.freeze({
  page: "chat", // sent in the hello message
  offerUrl: "api/rtc/offer", // relative to the page, so a path prefix works
  avatar: null,
  deployment: null,
  profile: null,
  camera: false,
  mediaElement: null, // <video> that plays the remote voice and face
  iceUrl: "api/rtc/ice", // ICE servers and policy from the server; null = use iceServers
  iceServers: [], // without iceUrl: the server is reached directly, host candidates
  iceTransportPolicy: "all", // without iceUrl; "relay" = media only through TURN
  iceGatheringTimeoutMs: 5000, // then send what was gathered
  offerTimeoutMs: 20000,
  connectTimeoutMs: 20000, // answer applied -> data channel open
  disconnectGraceMs: 3000, // ICE "disconnected" often heals by itself
  reconnectOnEnded: false, // kiosk: true (a new conversation starts by itself)
  retryForever: false, // kiosk: true (even errors that look permanent are retried)
  maxReconnectAttempts: Infinity,
  backoff: Object.freeze({ baseMs: 1000, capMs: 30000, jitter: 0.2 }),
  hooks: true, // publish window.likeness for tests
});

const HANDLER_NAMES = Object.freeze([
  "onState",
  "onTranscript",
  "onReply",
  "onAlert",
  "onError",
  "onMetrics",
  "onInterrupted",
  "onConnectionChange",
  "onMessage",
  "onTrack",
  "onAutoplayBlocked",
]);

const EVENT_LOG_LIMIT = 500;

// ---------------------------------------------------------------------------------------
// Signaling

/** GET api/config as JSON, or null when the server is unreachable or says no. */
export async function loadConfig({ url = "api/config", profile = null, timeoutMs = 4000 } = {}) {
  const target = profile ? `${url}?profile=${encodeURIComponent(profile)}` : url;
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const res = await fetch(target, { cache: "no-store", signal: ctrl.signal });
    if (!res.ok) return null;
    const data = await res.json();
    return data && typeof data === "object" ? data : null;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves true when ICE gathering completes, false on timeout (then send what there is). */
export function waitForIceGathering(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise((resolve) => {
    let timer = null;
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve(complete);
    };
    const onState = () => {
      if (pc.iceGatheringState === "complete") done(true);
    };
    const onCandidate = (event) => {
      if (!event.candidate) done(true);
    };
    timer = setTimeout(() => done(false), timeoutMs);
    pc.addEventListener("icegatheringstatechange", onState);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

/**
 * POST api/rtc/ice: the RTCPeerConnection configuration for the next connection
 * ({iceServers, iceTransportPolicy}), or null when the server has no such route
 * (404, 405, 501).
 * Throws a CompanionError (retryable on 429/5xx/network) otherwise.
 */
export async function fetchIceConfig(url, timeoutMs = 10000) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    let res;
    try {
      res = await fetch(url, { method: "POST", cache: "no-store", signal: ctrl.signal });
    } catch (err) {
      throw new CompanionError("Cannot reach the companion.", { code: "network", retryable: true, cause: err });
    }
    if ([404, 405, 501].includes(res.status)) return null; // a server without the route
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      throw new CompanionError(data?.error || `HTTP ${res.status}`, {
        code: "ice",
        status: res.status,
        retryable: res.status >= 500 || res.status === 429,
        retryAfterMs: parseRetryAfter(res.headers.get("Retry-After")),
      });
    }
    if (!data || !Array.isArray(data.iceServers)) {
      throw new CompanionError("The companion sent ICE servers this page cannot read.", { code: "ice", retryable: true });
    }
    const policy = data.iceTransportPolicy === "relay" ? "relay" : "all";
    return { iceServers: data.iceServers, iceTransportPolicy: policy };
  } finally {
    clearTimeout(timer);
  }
}

/** How many relay (TURN) candidates an SDP carries. */
export function relayCandidates(sdp) {
  return sdp.split(/\r?\n/).filter((line) => line.startsWith("a=candidate") && line.includes(" typ relay")).length;
}

/** POST the offer; returns {sdp, type, session_id} or throws a CompanionError. */
export async function postOffer(url, body, timeoutMs = 20000) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    let res;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
        signal: ctrl.signal,
      });
    } catch (err) {
      const timedOut = ctrl.signal.aborted;
      throw new CompanionError(
        timedOut ? "The companion did not answer in time." : "Cannot reach the companion.",
        { code: timedOut ? "timeout" : "network", retryable: true, cause: err },
      );
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const message = data && typeof data.error === "string" && data.error ? data.error : `HTTP ${res.status}`;
      throw new CompanionError(message, {
        code: "offer",
        status: res.status,
        retryable: res.status >= 500 || res.status === 408 || res.status === 429,
        retryAfterMs: parseRetryAfter(res.headers.get("Retry-After")),
      });
    }
    if (!data || typeof data.sdp !== "string" || data.type !== "answer") {
      throw new CompanionError("The companion sent an answer this page cannot read.", {
        code: "offer",
        status: res.status,
        retryable: true,
      });
    }
    return data;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------
// The connection

export class CompanionConnection {
  /**
   * @param {object} options see DEFAULT_OPTIONS; handlers (onState, onTranscript, onReply,
   *   onAlert, onError, onMetrics, onConnectionChange, onMessage, onTrack, onAutoplayBlocked)
   *   may be passed here or assigned later as properties.
   */
  constructor(options = {}) {
    this.options = {
      ...DEFAULT_OPTIONS,
      ...options,
      backoff: { ...DEFAULT_OPTIONS.backoff, ...(options.backoff || {}) },
    };
    for (const name of HANDLER_NAMES) this[name] = options[name] || null;
    this.status = "idle";
    this.state = null;
    this.sessionId = null;
    this.attempt = 0; // consecutive failures since the last good connection
    this.reconnects = 0;
    this.localStream = null;
    this.remoteStream = null;
    this.lastMetrics = null;
    this._pc = null;
    this._dc = null;
    this._gen = 0; // bumped whenever an attempt is abandoned; stale callbacks compare it
    this._stopped = true;
    this._retryTimer = null;
    this._graceTimer = null;
    this._muted = false;
    this._hooks = this.options.hooks ? likenessHooks(this.options.page) : null;
    this._hook({ connection: this, status: "idle", connected: false, muted: false, reconnects: 0, sessionId: null });
  }

  get muted() {
    return this._muted;
  }

  get connected() {
    return this.status === "connected";
  }

  /** Starts connecting; resolves after the first attempt (errors go to the handlers). */
  async start() {
    if (!this._stopped) return;
    this._stopped = false;
    this.attempt = 0;
    await this._connect();
  }

  /**
   * The page judged the connection dead (no heartbeat and no media: heartbeat.js):
   * drop it now and reconnect with back-off, as when ICE fails.
   */
  reconnect(reason = "page") {
    if (this._stopped || this._retryTimer) return;
    this._lost(reason);
  }

  /** Skips the back-off wait of a pending reconnect. */
  retryNow() {
    if (this._stopped || !this._retryTimer) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.reconnects += 1;
    this._hook({ reconnects: this.reconnects });
    this._connect();
  }

  /** Mutes by disabling the microphone track (kept across reconnects). */
  setMuted(muted) {
    this._muted = Boolean(muted);
    if (this.localStream) {
      for (const track of this.localStream.getAudioTracks()) track.enabled = !this._muted;
    }
    this._hook({ muted: this._muted });
  }

  /** Sends a JSON message on the events channel; false when it is not open. */
  send(message) {
    if (!this._dc || this._dc.readyState !== "open") return false;
    this._dc.send(JSON.stringify(message));
    return true;
  }

  /** Ends the conversation politely ({"type":"end"}), then closes; no reconnect. */
  async end() {
    if (this.send({ type: "end" })) await this._drain(this._dc, 500);
    this._shutdown("ended");
  }

  /** Tears everything down at once; no reconnect. */
  close() {
    this._shutdown("closed");
  }

  // -- internals ----------------------------------------------------------------------

  _shutdown(status, detail = {}) {
    this._stopped = true;
    this._gen += 1;
    this._clearTimers();
    this._teardownPeer();
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) track.stop();
      this.localStream = null;
    }
    this._setStatus(status, detail);
  }

  async _connect() {
    this._clearTimers();
    this._teardownPeer();
    const gen = ++this._gen;
    this.state = null; // unknown until the new session says
    this._hook({ state: null });
    if (this.attempt === 0) this._setStatus("connecting", {});
    else this._setStatus("reconnecting", { attempt: this.attempt, delayMs: 0 });
    try {
      const local = await this._ensureLocalMedia();
      if (gen !== this._gen) return;

      const fetched = this.options.iceUrl ? await fetchIceConfig(this.options.iceUrl) : null;
      if (gen !== this._gen) return;
      const rtcConfig = fetched ?? {
        iceServers: this.options.iceServers,
        iceTransportPolicy: this.options.iceTransportPolicy,
      };
      this._hook({ iceTransportPolicy: rtcConfig.iceTransportPolicy });
      const pc = new RTCPeerConnection(rtcConfig);
      this._pc = pc;
      const remote = new MediaStream();
      this.remoteStream = remote;
      pc.ontrack = (event) => {
        if (gen !== this._gen) return;
        if (!remote.getTracks().includes(event.track)) remote.addTrack(event.track);
      };
      const audioTrack = local.getAudioTracks()[0];
      pc.addTransceiver(audioTrack, { direction: "sendrecv", streams: [local] });
      const videoTrack = local.getVideoTracks()[0];
      if (videoTrack) pc.addTransceiver(videoTrack, { direction: "sendrecv", streams: [local] });
      else pc.addTransceiver("video", { direction: "recvonly" });
      const dc = pc.createDataChannel("events", { ordered: true });
      this._dc = dc;
      this._wireChannel(dc, gen);
      this._wirePeer(pc, gen);

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc, this.options.iceGatheringTimeoutMs);
      if (gen !== this._gen) return;
      if (rtcConfig.iceTransportPolicy === "relay" && !relayCandidates(pc.localDescription.sdp)) {
        // Without this the offer would go out with no candidate and fail without a word.
        throw new CompanionError(
          "Cannot reach the relay server (TURN): it refused this page's credentials or is unreachable.",
          { code: "ice", retryable: true },
        );
      }

      const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
      if (this.options.avatar) body.avatar = this.options.avatar;
      if (this.options.deployment) body.deployment = this.options.deployment;
      if (this.options.profile) body.profile = this.options.profile;
      const answer = await postOffer(this.options.offerUrl, body, this.options.offerTimeoutMs);
      if (gen !== this._gen) return;
      this.sessionId = answer.session_id ?? null;
      this._hook({ sessionId: this.sessionId });
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      if (gen !== this._gen) return;
      this._attachRemote(remote);

      await this._waitOpen(dc, this.options.connectTimeoutMs);
      if (gen !== this._gen) return;
      this.attempt = 0;
      this._setStatus("connected", { sessionId: this.sessionId });
    } catch (err) {
      if (gen !== this._gen || this._stopped) return;
      this._fail(asCompanionError(err), "connect");
    }
  }

  async _ensureLocalMedia() {
    const live = (s) => s && s.getAudioTracks().some((t) => t.readyState === "live");
    if (live(this.localStream)) return this.localStream;
    if (this.localStream) for (const t of this.localStream.getTracks()) t.stop();
    this.localStream = null;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new CompanionError(
        "This page needs a secure address (https or localhost) and a browser that can use a microphone.",
        { code: "media", retryable: false },
      );
    }
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };
    let stream = null;
    if (this.options.camera) {
      try {
        const video = { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" };
        stream = await navigator.mediaDevices.getUserMedia({ audio, video });
      } catch (err) {
        this._emitError(new CompanionError("The camera is not available; continuing with voice only.", {
          code: "camera",
          retryable: true,
          cause: err,
        }));
      }
    }
    if (!stream) {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
      } catch (err) {
        throw mediaError(err);
      }
    }
    for (const track of stream.getAudioTracks()) {
      track.enabled = !this._muted;
      track.onended = () => {
        if (!this._stopped && this.localStream === stream) this._lost("microphone-ended");
      };
    }
    this.localStream = stream;
    return stream;
  }

  _wirePeer(pc, gen) {
    const check = () => {
      if (gen !== this._gen || this._stopped) return;
      const states = [pc.connectionState, pc.iceConnectionState];
      if (states.includes("failed")) {
        this._lost("ice-failed");
      } else if (states.includes("closed")) {
        this._lost("peer-closed");
      } else if (states.includes("disconnected")) {
        if (this._graceTimer) return;
        this._graceTimer = setTimeout(() => {
          this._graceTimer = null;
          if (gen !== this._gen || this._stopped) return;
          const now = [pc.connectionState, pc.iceConnectionState];
          if (now.includes("disconnected") || now.includes("failed")) this._lost("ice-disconnected");
        }, this.options.disconnectGraceMs);
      } else if (this._graceTimer) {
        clearTimeout(this._graceTimer);
        this._graceTimer = null;
      }
    };
    pc.onconnectionstatechange = check;
    pc.oniceconnectionstatechange = check;
  }

  _wireChannel(dc, gen) {
    dc.onopen = () => {
      if (gen === this._gen) this.send({ type: "hello", page: this.options.page });
    };
    dc.onmessage = (event) => {
      if (gen === this._gen) this._onMessage(event.data);
    };
    dc.onclose = () => {
      if (gen !== this._gen || this._stopped) return;
      if (this.status === "connected") this._lost("channel-closed");
    };
  }

  _waitOpen(dc, timeoutMs) {
    if (dc.readyState === "open") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new CompanionError("The connection to the companion did not open in time.", {
          code: "ice",
          retryable: true,
        }));
      }, timeoutMs);
      const onOpen = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(new CompanionError("The companion closed the connection.", { code: "channel", retryable: true }));
      };
      const cleanup = () => {
        clearTimeout(timer);
        dc.removeEventListener("open", onOpen);
        dc.removeEventListener("close", onClose);
      };
      dc.addEventListener("open", onOpen);
      dc.addEventListener("close", onClose);
    });
  }

  _drain(dc, timeoutMs) {
    return new Promise((resolve) => {
      const started = Date.now();
      const poll = () => {
        if (!dc || dc.readyState !== "open" || dc.bufferedAmount === 0 || Date.now() - started > timeoutMs) {
          setTimeout(resolve, 50); // let SCTP hand the last message to the wire
        } else {
          setTimeout(poll, 20);
        }
      };
      poll();
    });
  }

  _attachRemote(remote) {
    const el = this.options.mediaElement;
    if (el) {
      if (el.srcObject !== remote) el.srcObject = remote;
      playMedia(el).then((result) => {
        if (result === "muted" || result === "blocked") this._emit("onAutoplayBlocked", result);
      });
    }
    meter.attach(el, remote);
    this._emit("onTrack", remote);
  }

  /** Server events; unknown types are passed to onMessage only. */
  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") return;
    const hooks = this._hooks;
    if (hooks && msg.type !== "heartbeat") { // heartbeats would crowd out the rest
      hooks.events.push(msg);
      if (hooks.events.length > EVENT_LOG_LIMIT) hooks.events.splice(0, hooks.events.length - EVENT_LOG_LIMIT);
    }
    switch (msg.type) {
      case "state": // {"type":"state","state":"listening"|"thinking"|"speaking"|"ended", "reason"?}
        this.state = String(msg.state);
        this._hook({ state: this.state });
        if (this.state === "ended" && hooks) hooks.endReason = msg.reason ?? null;
        this._emit("onState", this.state, msg.reason ?? null);
        if (this.state === "ended") this._serverEnded();
        break;
      case "transcript": {
        // {"type":"transcript","text":..., "final": bool}: the user's words
        const text = String(msg.text ?? "");
        const final = Boolean(msg.final);
        if (hooks) {
          if (final) {
            hooks.transcripts.push(text);
            hooks.partial = "";
          } else {
            hooks.partial = text;
          }
        }
        this._emit("onTranscript", { text, final });
        break;
      }
      case "reply": {
        // {"type":"reply","text":...}: one sentence of the reply, as spoken
        const text = String(msg.text ?? "");
        if (hooks) hooks.replies.push(text);
        this._emit("onReply", { text });
        break;
      }
      case "alert": {
        // {"type":"alert","category":..., "severity"?}: distress; pages decide what to show
        const alert = { category: msg.category ?? null, severity: msg.severity ?? null, at: Date.now() };
        if (hooks) hooks.alerts.push(alert);
        this._emit("onAlert", alert);
        break;
      }
      case "error": {
        // {"type":"error","message":...}: the session goes on; the page may show it
        const err = new CompanionError(String(msg.message ?? "error"), { code: "server", retryable: true });
        this._emitError(err);
        break;
      }
      case "interrupted": {
        // {"type":"interrupted","heard":...}: barge-in; the reply stopped after `heard`
        const heard = String(msg.heard ?? "");
        if (hooks) hooks.interruptions.push(heard);
        this._emit("onInterrupted", { heard });
        break;
      }
      case "heartbeat": // {"type":"heartbeat"} every 0.5 s: the server lives (heartbeat.js)
        break;
      case "metrics": {
        // {"type":"metrics","stages_ms":{...}}: per-turn latencies
        const stages = msg.stages_ms && typeof msg.stages_ms === "object" ? msg.stages_ms : {};
        this.lastMetrics = stages;
        if (hooks) {
          hooks.metrics.push(stages);
          hooks.lastMetrics = stages;
        }
        this._emit("onMetrics", stages);
        break;
      }
      default:
        break;
    }
    this._emit("onMessage", msg);
  }

  _serverEnded() {
    if (this._stopped) return;
    if (this.options.reconnectOnEnded) {
      this.attempt = 0;
      this._scheduleReconnect("ended", null);
    } else {
      this._shutdown("ended");
    }
  }

  /** A live connection broke: reconnect with back-off. */
  _lost(reason) {
    if (this._stopped) return;
    const err = new CompanionError("The connection to the companion was lost.", { code: "ice", retryable: true });
    err.reason = reason;
    this._emitError(err);
    this._scheduleReconnect(reason, err);
  }

  _fail(err, reason) {
    this._emitError(err);
    if (!err.retryable && !this.options.retryForever) {
      this._shutdown("failed", { error: err, reason });
      return;
    }
    this._scheduleReconnect(reason, err);
  }

  _scheduleReconnect(reason, err) {
    if (this._stopped || this._retryTimer) return;
    this._gen += 1; // abandon whatever attempt is in flight
    this._clearTimers();
    this._teardownPeer();
    this.attempt += 1;
    if (reason !== "ended") {
      this.state = null; // the server's state is unknown until a session says
      this._hook({ state: null });
    }
    if (this.attempt > this.options.maxReconnectAttempts) {
      this._shutdown("failed", { reason: "gave-up", error: err });
      return;
    }
    const delayMs = Math.max(backoffDelay(this.attempt, this.options.backoff), err ? err.retryAfterMs : 0);
    this._setStatus("reconnecting", { attempt: this.attempt, delayMs, reason, error: err });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._stopped) return;
      this.reconnects += 1;
      this._hook({ reconnects: this.reconnects });
      this._connect();
    }, delayMs);
  }

  _teardownPeer() {
    const pc = this._pc;
    const dc = this._dc;
    this._pc = null;
    this._dc = null;
    if (dc) {
      dc.onopen = dc.onmessage = dc.onclose = null;
      try {
        dc.close();
      } catch {
        /* already closed */
      }
    }
    if (pc) {
      pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
      try {
        pc.close();
      } catch {
        /* already closed */
      }
    }
  }

  _clearTimers() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._graceTimer);
    this._retryTimer = null;
    this._graceTimer = null;
  }

  _setStatus(status, detail) {
    this.status = status;
    this._hook({ status, connected: status === "connected" });
    this._emit("onConnectionChange", { status, attempt: this.attempt, ...detail });
  }

  _emitError(err) {
    if (this._hooks) {
      this._hooks.errors.push({ code: err.code, message: err.message, at: Date.now() });
      if (this._hooks.errors.length > EVENT_LOG_LIMIT) this._hooks.errors.shift();
    }
    this._emit("onError", err);
  }

  _hook(patch) {
    if (this._hooks) Object.assign(this._hooks, patch);
  }

  _emit(name, ...args) {
    const handler = this[name];
    if (typeof handler !== "function") return;
    try {
      handler(...args);
    } catch (err) {
      // A page bug must not break the connection; rethrow where window.onerror sees it.
      setTimeout(() => {
        throw err;
      });
    }
  }
}

function mediaError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new CompanionError("Microphone access is blocked. Allow the microphone for this page, then start again.", {
      code: "media",
      retryable: false,
      cause: err,
    });
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new CompanionError("No microphone was found.", { code: "media", retryable: true, cause: err });
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return new CompanionError("The microphone is busy or cannot be read.", { code: "media", retryable: true, cause: err });
  }
  return new CompanionError(`The microphone cannot be used (${name || err}).`, { code: "media", retryable: true, cause: err });
}
