// The consent portal's shared page code: the JSON API (with the CSRF header), the signed-in
// user, the navigation, passkey encoding and a DOM builder that only ever inserts text.
//
// Rule for every portal page: text that came from a person or the server goes into the page
// with textContent (through el() / setText()), never innerHTML.

const API = "/api/consent";
let csrf = "";

/** An API failure with its HTTP status and the server's plain-words message. */
export class ApiError extends Error {
  constructor(status, message, retryAfter = 0) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/**
 * Call the portal API. `body` is sent as JSON (or as-is when it is a Blob / ArrayBuffer).
 * Every state-changing call carries the session's CSRF token. Resolves to the parsed JSON;
 * rejects with ApiError (status 401: not signed in).
 */
export async function api(path, { method = "GET", body, query } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD" && csrf) headers["X-CSRF-Token"] = csrf;
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const url = API + path + (query ? "?" + new URLSearchParams(query).toString() : "");
  let response;
  try {
    response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && typeof data.error === "string" && data.error) || response.statusText;
    throw new ApiError(response.status, message, Number(response.headers.get("Retry-After")) || 0);
  }
  return data;
}

/** The signed-in user ({user, csrf_token}) or null; remembers the CSRF token. */
export async function whoAmI() {
  try {
    const me = await api("/auth/me");
    csrf = me.csrf_token;
    return me.user;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

/** Forget the session (server and cookie). */
export async function signOut() {
  await api("/auth/signout", { method: "POST", body: {} });
  csrf = "";
}

/** Build an element: attributes (strings, booleans, on* handlers) and children (text or nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's content with text. */
export function setText(node, text) {
  node.textContent = text == null ? "" : String(text);
}

/** Show a status line; `kind` is "ok", "error" or "" (also readable without colour). */
export function say(node, text, kind = "") {
  setText(node, text);
  node.dataset.kind = kind;
}

/** "12 Mar 2031, 14:05" in the reader's locale from the API's UTC time text. */
export function when(text) {
  if (!text) return "—";
  const at = new Date(text);
  return Number.isNaN(at.getTime())
    ? String(text)
    : at.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

const LINKS = [
  ["index.html", "Account", () => true],
  ["grants.html", "My grants", (u) => u.roles.includes("subject") || u.roles.includes("guardian")],
  ["enrol.html", "Add my face", (u) => u.roles.includes("subject") || u.roles.includes("guardian")],
  ["guardians.html", "Guardians", (u) => !u.roles.includes("auditor") || u.roles.length > 1],
  ["data.html", "My data", (u) => u.roles.includes("subject") || u.roles.includes("guardian")],
  ["operator.html", "Deployments", (u) => u.roles.includes("operator")],
  ["audit.html", "Audit log", (u) => u.roles.includes("auditor")],
];

/** Fill the page's <nav id="portal-nav"> for this user (current page marked). */
export function renderNav(user) {
  const nav = document.getElementById("portal-nav");
  if (!nav) return;
  const here = location.pathname.split("/").pop() || "index.html";
  const list = el("ul", { class: "nav-list" });
  for (const [href, label, show] of LINKS) {
    if (!user || !show(user)) continue;
    list.append(el("li", {}, el("a", { href, "aria-current": href === here ? "page" : false }, label)));
  }
  nav.replaceChildren(list);
  const who = document.getElementById("who");
  if (who && user) setText(who, `Signed in as ${user.display_name} (${user.email})`);
}

/**
 * The start of every signed-in page: who is signed in (sent to the sign-in page if nobody),
 * navigation, sign-out button, and `window.likeness.portal` for tests.
 */
export async function startPage(name) {
  window.likeness = window.likeness || {};
  const state = { page: name, ready: false, user: null, error: null };
  window.likeness.portal = state;
  const user = await whoAmI();
  if (!user) {
    location.replace("index.html?next=" + encodeURIComponent(location.pathname.split("/").pop()));
    return null;
  }
  state.user = user;
  renderNav(user);
  const out = document.getElementById("signout");
  if (out) {
    out.hidden = false;
    out.addEventListener("click", async () => {
      await signOut();
      location.assign("index.html");
    });
  }
  return user;
}

// ---- passkeys (WebAuthn JSON <-> ArrayBuffers) ----------------------------------------------

export function fromB64url(text) {
  const b64 = text.replaceAll("-", "+").replaceAll("_", "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
}

export function toB64url(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function creationOptions(json) {
  if (PublicKeyCredential.parseCreationOptionsFromJSON) {
    return PublicKeyCredential.parseCreationOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: fromB64url(json.challenge),
    user: { ...json.user, id: fromB64url(json.user.id) },
    excludeCredentials: (json.excludeCredentials || []).map((c) => ({ ...c, id: fromB64url(c.id) })),
  };
}

function requestOptions(json) {
  if (PublicKeyCredential.parseRequestOptionsFromJSON) {
    return PublicKeyCredential.parseRequestOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: fromB64url(json.challenge),
    allowCredentials: (json.allowCredentials || []).map((c) => ({ ...c, id: fromB64url(c.id) })),
  };
}

function credentialJSON(cred) {
  if (typeof cred.toJSON === "function") return cred.toJSON();
  const r = cred.response;
  const response = { clientDataJSON: toB64url(r.clientDataJSON) };
  if (r.attestationObject) response.attestationObject = toB64url(r.attestationObject);
  if (r.authenticatorData) response.authenticatorData = toB64url(r.authenticatorData);
  if (r.signature) response.signature = toB64url(r.signature);
  if (r.userHandle) response.userHandle = toB64url(r.userHandle);
  if (r.getTransports) response.transports = r.getTransports();
  return { id: cred.id, rawId: toB64url(cred.rawId), type: cred.type, response, clientExtensionResults: {} };
}

/** True when this browser can make and use passkeys. */
export function passkeysSupported() {
  return typeof window.PublicKeyCredential === "function" && !!navigator.credentials;
}

/** Add a passkey to the signed-in account; resolves to the stored passkey's JSON. */
export async function registerPasskey(name) {
  const begin = await api("/auth/passkey/register/begin", { method: "POST", body: {} });
  const cred = await navigator.credentials.create({ publicKey: creationOptions(begin.options) });
  const done = await api("/auth/passkey/register/finish", {
    method: "POST",
    body: { challenge_id: begin.challenge_id, credential: credentialJSON(cred), name },
  });
  return done.passkey;
}

/** Sign in with a passkey (any passkey of this site, or the email's); resolves to the user. */
export async function signInWithPasskey(email) {
  const begin = await api("/auth/passkey/signin/begin", { method: "POST", body: email ? { email } : {} });
  const cred = await navigator.credentials.get({ publicKey: requestOptions(begin.options) });
  const done = await api("/auth/passkey/signin/finish", {
    method: "POST",
    body: { challenge_id: begin.challenge_id, credential: credentialJSON(cred) },
  });
  return done.user;
}
