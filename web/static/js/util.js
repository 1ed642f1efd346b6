// Pure helpers of the likeness pages: back-off, Retry-After, URL parameters, caption cuts
// and the error type. No browser globals at import time: Node imports this file in tests.

const RETRY_AFTER_CAP_MS = 5 * 60 * 1000;

/**
 * Delay before reconnect attempt number `attempt` (1, 2, ...): base * 2^(attempt-1),
 * capped, with +/- `jitter` spread so that many kiosks do not retry in step.
 */
export function backoffDelay(attempt, options = {}) {
  const { baseMs = 1000, capMs = 30000, jitter = 0.2, random = Math.random } = options;
  const n = Math.max(1, Math.floor(Number(attempt) || 1));
  const raw = Math.min(capMs, baseMs * 2 ** Math.min(n - 1, 30));
  const spread = raw * jitter * (2 * random() - 1);
  return Math.max(0, Math.min(capMs, Math.round(raw + spread)));
}

/** Milliseconds from a Retry-After header (seconds or an HTTP date); 0 when absent. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || String(value).trim() === "") return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.min(RETRY_AFTER_CAP_MS, Math.max(0, seconds * 1000));
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.min(RETRY_AFTER_CAP_MS, Math.max(0, at - now)) : 0;
}

/** Typed reading of URL query parameters; a missing or malformed value gives the default. */
export function readParams(search) {
  const query = new URLSearchParams(search ?? (typeof location === "undefined" ? "" : location.search));
  return {
    has: (name) => query.has(name),
    str(name, fallback = null) {
      const value = query.get(name);
      return value == null || value.trim() === "" ? fallback : value.trim();
    },
    bool(name, fallback = false) {
      const value = query.get(name);
      if (value == null) return fallback;
      const v = value.trim().toLowerCase();
      if (["1", "true", "yes", "on", ""].includes(v)) return true;
      if (["0", "false", "no", "off"].includes(v)) return false;
      return fallback;
    },
    num(name, fallback = null, { min = -Infinity, max = Infinity } = {}) {
      const value = query.get(name);
      if (value == null || value.trim() === "") return fallback;
      const n = Number(value);
      return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : fallback;
    },
  };
}

/** A volume as 0..1; values above 1 are read as percent (80 -> 0.8). */
export function normalizeVolume(value, fallback = 1) {
  const n = Number(value);
  if (value == null || value === "" || !Number.isFinite(n) || n < 0) return fallback;
  return Math.min(1, n > 1 ? n / 100 : n);
}

/**
 * The reply caption after a barge-in: the turn's sentences cut where `heard` ends, with an
 * ellipsis. `heard` may cover one sentence or several; when it cannot be found, it is used
 * as it is. Returns the sentences to show.
 */
export function cutAtHeard(sentences, heard) {
  const said = String(heard ?? "").trim();
  if (!said) return [...sentences];
  const joined = sentences.join(" ");
  const at = joined.lastIndexOf(said);
  const kept = at >= 0 ? joined.slice(0, at + said.length) : said;
  return [`${kept.trimEnd()}…`];
}

/** An error with what the caller needs to decide on a retry. */
export class CompanionError extends Error {
  /**
   * @param {string} message shown to people; keep it plain
   * @param {{code?: string, status?: number, retryable?: boolean, retryAfterMs?: number, cause?: unknown}} [info]
   *   code: "media" | "camera" | "network" | "timeout" | "offer" | "ice" | "channel" | "server"
   */
  constructor(message, info = {}) {
    super(message);
    this.name = "CompanionError";
    this.code = info.code ?? "error";
    this.status = info.status ?? 0;
    this.retryable = info.retryable ?? true;
    this.retryAfterMs = info.retryAfterMs ?? 0;
    if (info.cause !== undefined) this.cause = info.cause;
  }
}

/** Any thrown value as a CompanionError (retryable unless it says otherwise). */
export function asCompanionError(err) {
  if (err instanceof CompanionError) return err;
  const message = err && err.message ? err.message : String(err);
  return new CompanionError(message, { code: "error", retryable: true, cause: err });
}
