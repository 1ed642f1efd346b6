// Is the companion still there? The page's half of the heartbeat, and the /health poll.
//
// The server sends {"type":"heartbeat"} on the "events" data channel every 0.5 s
// (runtime/liveness.py) and ends a session whose page sent nothing and no media for 2 s.
// A page (kiosk.js, chat.js) makes one Heartbeat per CompanionConnection and:
//   - calls seen() on every message from the server (the connection's onMessage);
//   - calls connected() / disconnected() as the connection's status changes;
// while connected, the Heartbeat sends {"type":"heartbeat"} back every HEARTBEAT_MS and
// calls onDead() once when neither a message nor a new video frame arrived for
// DEAD_AFTER_MS (time the page's own timers stood still does not count: after a stall
// the messages that waited are read first): the server is gone (killed, restarting, unreachable) although the peer
// connection may still say "connected" for another ten seconds. The page then shows it
// at once and asks the connection to reconnect (connection.reconnect(reason)).
//
// HealthPoller polls GET health until the server says it is ready, so a kiosk can
// reconnect the moment a restarted server can take it, not at its next back-off.

import { meter } from "./media.js";

export const HEARTBEAT_MS = 500; // as the server's HEARTBEAT_S
export const DEAD_AFTER_MS = 1300; // + one check (CHECK_MS) + timer lag: within 2 s
const CHECK_MS = 100;
const STALLED_MS = 400; // a check this late: the page itself stood still (a busy host)

export class Heartbeat {
  /**
   * @param {object} options
   * @param {(message: object) => boolean} options.send sends one message; false if it could not
   * @param {() => void} options.onDead called once per connection when the server went silent
   * @param {() => number} [options.lastMediaAt] performance.now() of the last video frame
   *   presented (0: none); default: the page's MediaMeter
   * @param {number} [options.intervalMs] heartbeat period
   * @param {number} [options.deadAfterMs] silence that counts as a dead server
   */
  constructor({ send, onDead, lastMediaAt = () => meter.lastFrameAt(), intervalMs = HEARTBEAT_MS, deadAfterMs = DEAD_AFTER_MS }) {
    this._send = send;
    this._onDead = onDead;
    this._lastMediaAt = lastMediaAt;
    this.intervalMs = intervalMs;
    this.deadAfterMs = deadAfterMs;
    this.lastSeenAt = 0; // performance.now() of the last message from the server
    this._lastCheckAt = 0;
    this.dead = false;
    this._beat = null;
    this._check = null;
  }

  /** A message came from the server. */
  seen() {
    this.lastSeenAt = performance.now();
  }

  /** The connection is up: start beating and watching (the silence counts from now). */
  connected() {
    this.disconnected();
    this.dead = false;
    this.seen();
    this._lastCheckAt = performance.now();
    this._beat = setInterval(() => this._send({ type: "heartbeat" }), this.intervalMs);
    this._check = setInterval(() => this._watch(), CHECK_MS);
  }

  /** The connection is down or being replaced: stop until connected() again. */
  disconnected() {
    clearInterval(this._beat);
    clearInterval(this._check);
    this._beat = this._check = null;
  }

  /** Milliseconds since the server was last heard from (a message or a video frame). */
  silentForMs(now = performance.now()) {
    return now - Math.max(this.lastSeenAt, this._lastMediaAt() || 0);
  }

  _watch() {
    const now = performance.now();
    const late = now - this._lastCheckAt - CHECK_MS;
    this._lastCheckAt = now;
    if (late > STALLED_MS) this.lastSeenAt += late; // not the server's silence
    if (this.dead || this.silentForMs(now) < this.deadAfterMs) return;
    this.dead = true;
    this.disconnected();
    this._onDead();
  }
}

export class HealthPoller {
  /**
   * @param {object} options
   * @param {(health: object) => void} options.onReady called once per start() when the
   *   server answers ready with a free session slot
   * @param {string} [options.url] the health endpoint, relative to the page
   * @param {number} [options.everyMs] poll period
   */
  constructor({ onReady, url = "health", everyMs = 250 }) {
    this._onReady = onReady;
    this.url = url;
    this.everyMs = everyMs;
    this.running = false;
    this._timer = null;
    this._run = 0;
  }

  start() {
    if (this.running) return;
    this.running = true;
    const run = ++this._run;
    const poll = async () => {
      if (run !== this._run) return;
      const health = await fetchHealth(this.url, Math.max(this.everyMs * 4, 1000));
      if (run !== this._run) return;
      if (health && health.status === "ready" && !(health.sessions >= health.max_sessions)) {
        this.stop();
        this._onReady(health);
        return;
      }
      this._timer = setTimeout(poll, this.everyMs);
    };
    poll();
  }

  stop() {
    this.running = false;
    this._run += 1;
    clearTimeout(this._timer);
    this._timer = null;
  }
}

/** GET health as JSON ({status, sessions, max_sessions, ...}), or null when unreachable. */
export async function fetchHealth(url = "health", timeoutMs = 1000) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const res = await fetch(url, { cache: "no-store", signal: ctrl.signal });
    const body = await res.json().catch(() => null);
    return body && typeof body === "object" ? body : null;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}
