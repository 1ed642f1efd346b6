// The portal's front page: sign in (password or passkey), sign up, and the account
// (passkeys) once signed in.

import {
  api,
  ApiError,
  el,
  passkeysSupported,
  registerPasskey,
  renderNav,
  say,
  setText,
  signInWithPasskey,
  signOut,
  when,
  whoAmI,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const state = { page: "index", ready: false, user: null, passkeys: [], error: null };
window.likeness = window.likeness || {};
window.likeness.portal = state;

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "";
  return /^[a-z]+\.html$/.test(next) ? next : null;
}

function fail(err) {
  state.error = err.message;
  const wait = err instanceof ApiError && err.retryAfter ? ` (wait ${err.retryAfter} s)` : "";
  say($("status"), err.message + wait, "error");
}

async function afterSignIn() {
  const next = nextPage();
  if (next) {
    location.assign(next);
    return;
  }
  await show();
}

async function showPasskeys() {
  const data = await api("/auth/passkeys");
  state.passkeys = data.passkeys;
  const list = $("passkeys");
  list.replaceChildren();
  if (!data.passkeys.length) list.append(el("li", { class: "empty" }, "No passkey yet."));
  for (const key of data.passkeys) {
    const remove = el("button", { type: "button", class: "link-button" }, "Remove");
    remove.addEventListener("click", async () => {
      try {
        await api(`/auth/passkeys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
        say($("status"), "Passkey removed.", "ok");
        await showPasskeys();
      } catch (err) {
        fail(err);
      }
    });
    list.append(
      el(
        "li",
        { class: "card" },
        el("h3", {}, key.name),
        el("p", { class: "hint" }, `Added ${when(key.created_at)} · last used ${when(key.last_used_at)}`),
        remove,
      ),
    );
  }
}

async function show() {
  const user = await whoAmI();
  state.user = user;
  renderNav(user);
  $("signed-in").hidden = !user;
  $("signed-out").hidden = !!user;
  if (!user) {
    say($("status"), "You are not signed in.");
    state.ready = true;
    return;
  }
  setText($("who"), `Signed in as ${user.display_name} (${user.email})`);
  setText($("roles"), `Your roles: ${user.roles.join(", ")}`);
  say($("status"), "You are signed in.", "ok");
  $("passkey-form").hidden = !passkeysSupported();
  await showPasskeys();
  state.ready = true;
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/auth/signin", {
      method: "POST",
      body: { email: $("signin-email").value, password: $("signin-password").value },
    });
    $("signin-password").value = "";
    await afterSignIn();
  } catch (err) {
    fail(err);
  }
});

$("signin-passkey").addEventListener("click", async () => {
  if (!passkeysSupported()) {
    say($("status"), "This browser cannot use passkeys; sign in with your password.", "error");
    return;
  }
  try {
    say($("status"), "Follow your device's prompt…");
    await signInWithPasskey($("signin-email").value.trim());
    await afterSignIn();
  } catch (err) {
    fail(err instanceof ApiError ? err : new Error("The passkey was not used: " + err.message));
  }
});

$("signup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/auth/signup", {
      method: "POST",
      body: {
        display_name: $("signup-name").value,
        email: $("signup-email").value,
        password: $("signup-password").value,
      },
    });
    $("signup-password").value = "";
    await afterSignIn();
  } catch (err) {
    fail(err);
  }
});

$("passkey-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    say($("status"), "Follow your device's prompt…");
    const key = await registerPasskey($("passkey-name").value);
    say($("status"), `Passkey "${key.name}" added.`, "ok");
    await showPasskeys();
  } catch (err) {
    fail(err instanceof ApiError ? err : new Error("No passkey was added: " + err.message));
  }
});

$("signout").addEventListener("click", async () => {
  try {
    await signOut();
    await show();
  } catch (err) {
    fail(err);
  }
});

show().catch(fail);
