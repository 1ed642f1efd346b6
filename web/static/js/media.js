// What the pages measure and expose: playback with an autoplay fallback, the received
// audio level and video frame count (MediaMeter), and the window.likeness test hooks.

/**
 * Plays `el`; when autoplay with sound is refused, plays muted and returns "muted" so the
 * page can offer a "turn on sound" button (call el.muted = false; el.play() from a gesture).
 */
export async function playMedia(el) {
  try {
    await el.play();
    return "playing";
  } catch (err) {
    if (err && err.name === "AbortError") return "aborted"; // a newer srcObject took over
    el.muted = true;
    try {
      await el.play();
      return "muted";
    } catch {
      return "blocked";
    }
  }
}

/**
 * Measures what comes in: the RMS of the received voice (WebAudio AnalyserNode) and the
 * number of video frames presented (requestVideoFrameCallback, or playback quality).
 * One per page; `resume()` from a user gesture where autoplay rules hold the AudioContext.
 */
export class MediaMeter {
  constructor() {
    this._ctx = null;
    this._analyser = null;
    this._sink = null;
    this._source = null;
    this._buf = null;
    this._el = null;
    this._handle = null;
    this._frames = 0;
    this._lastFrameAt = 0;
  }

  attach(el, stream) {
    if (el) this._watchVideo(el);
    if (stream) this._connectAudio(stream);
  }

  resume() {
    if (this._ctx && this._ctx.state === "suspended") this._ctx.resume().catch(() => {});
  }

  /** RMS (0..1) of the last ~43 ms of received audio; 0 before any audio. */
  audioLevel() {
    if (!this._analyser) return 0;
    this._analyser.getFloatTimeDomainData(this._buf);
    let sum = 0;
    for (let i = 0; i < this._buf.length; i += 1) sum += this._buf[i] * this._buf[i];
    return Math.sqrt(sum / this._buf.length);
  }

  /** Video frames presented since the page loaded (across reconnects). */
  videoFrames() {
    if (this._el && !this._hasRvfc()) return this._frames + this._qualityFrames();
    return this._frames;
  }

  /** The received picture's size; 0 x 0 before the first frame. */
  videoSize() {
    const el = this._el;
    return el ? { width: el.videoWidth, height: el.videoHeight } : { width: 0, height: 0 };
  }

  /** performance.now() of the last presented frame (0 when unknown). */
  lastFrameAt() {
    return this._lastFrameAt;
  }

  _hasRvfc() {
    return typeof HTMLVideoElement !== "undefined" && "requestVideoFrameCallback" in HTMLVideoElement.prototype;
  }

  _qualityFrames() {
    const quality = this._el && this._el.getVideoPlaybackQuality ? this._el.getVideoPlaybackQuality() : null;
    return quality ? quality.totalVideoFrames : 0;
  }

  _watchVideo(el) {
    if (this._el && this._handle != null && this._el.cancelVideoFrameCallback) {
      this._el.cancelVideoFrameCallback(this._handle);
      this._handle = null;
    }
    if (this._el && !this._hasRvfc()) this._frames += this._qualityFrames();
    this._el = el;
    if (!this._hasRvfc()) return;
    const tick = (now) => {
      this._frames += 1;
      this._lastFrameAt = now;
      this._handle = el.requestVideoFrameCallback(tick);
    };
    this._handle = el.requestVideoFrameCallback(tick);
  }

  _connectAudio(stream) {
    if (!stream.getAudioTracks().length) return;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    try {
      if (!this._ctx) {
        this._ctx = new Ctx();
        this._analyser = this._ctx.createAnalyser();
        this._analyser.fftSize = 2048;
        this._buf = new Float32Array(this._analyser.fftSize);
        // A silent path to the destination keeps the graph pulled in every browser.
        this._sink = this._ctx.createGain();
        this._sink.gain.value = 0;
        this._analyser.connect(this._sink);
        this._sink.connect(this._ctx.destination);
      }
      if (this._source) this._source.disconnect();
      this._source = this._ctx.createMediaStreamSource(stream);
      this._source.connect(this._analyser);
      this.resume();
    } catch (err) {
      console.warn("likeness: cannot meter the received audio", err);
    }
  }
}

/** The page's meter (window.likeness.audioLevel / videoFrames read it). */
export const meter = new MediaMeter();

/**
 * window.likeness: what tests read. Created once per page; the connection fills it.
 * Returns null outside a browser.
 */
export function likenessHooks(page = null) {
  if (typeof window === "undefined") return null;
  if (!window.likeness) {
    window.likeness = {
      page: null,
      status: "idle", // connection status (STATUSES)
      state: null, // companion state from the server (STATES)
      connected: false,
      sessionId: null,
      muted: false,
      reconnects: 0, // connection attempts after the first
      transcripts: [], // the user's final transcripts (strings)
      partial: "", // the user's latest partial transcript
      replies: [], // reply sentences as spoken (strings)
      metrics: [], // stages_ms objects, one per turn
      lastMetrics: null,
      alerts: [], // {category, severity, at}
      interruptions: [], // what was heard of each reply cut short by the user (strings)
      endReason: null, // "reason" of the last {"type":"state","state":"ended"}
      errors: [], // {code, message, at}: server error events and client failures
      events: [], // every data-channel message, newest last (capped)
      connection: null, // the CompanionConnection (tests may call end(), setMuted())
      audioLevel: () => meter.audioLevel(),
      videoFrames: () => meter.videoFrames(),
      lastFrameAt: () => meter.lastFrameAt(),
      videoSize: () => meter.videoSize(),
    };
  }
  if (page) window.likeness.page = page;
  return window.likeness;
}
