// Deployments (operators): register them, describe them, choose the avatars each may use.

import { api, el, say, startPage, when } from "./api.js";

const $ = (id) => document.getElementById(id);
let avatars = [];

function deploymentCard(d) {
  const edit = el("button", { type: "button", class: "button" }, "Change");
  edit.addEventListener("click", () => {
    $("deployment-name").value = d.name;
    $("deployment-description").value = d.description;
    for (const box of document.querySelectorAll("#avatar-choices input")) box.checked = d.avatars.includes(box.value);
    $("deployment-name").focus();
  });
  const remove = el("button", { type: "button", class: "button button-danger" }, "Remove");
  remove.addEventListener("click", async () => {
    if (!window.confirm(`Remove the deployment ${d.name}?`)) return;
    try {
      await api(`/deployments/${encodeURIComponent(d.name)}`, { method: "DELETE" });
      say($("status"), "Deployment removed.", "ok");
      await load();
    } catch (err) {
      say($("status"), err.message, "error");
    }
  });
  return el(
    "li",
    { class: "card deployment", dataset: { name: d.name } },
    el("h3", {}, d.name),
    el("p", { class: "description" }, d.description || "(no description)"),
    el("p", { class: "hint" }, `${d.avatars.length} avatar(s) · changed ${when(d.updated_at)}`),
    el("ul", {}, d.avatars.map((a) => el("li", {}, el("code", {}, a)))),
    el("div", { class: "row" }, edit, remove),
  );
}

async function load() {
  const [{ deployments }, live] = await Promise.all([api("/deployments"), api("/avatars")]);
  avatars = live.avatars;
  window.likeness.portal.deployments = deployments;
  $("deployments").replaceChildren(...deployments.map(deploymentCard));
  if (!deployments.length) $("deployments").append(el("li", { class: "empty" }, "No deployment yet."));
  $("avatar-choices").replaceChildren(
    ...avatars.map((a) =>
      el(
        "label",
        { class: "check" },
        el("input", { type: "checkbox", value: a.avatar_id }),
        ` ${a.avatar_id.slice(0, 16)}… (granted for ${a.deployments.join(", ")}, until ${when(a.expires_at)})`,
      ),
    ),
  );
  if (!avatars.length) $("avatar-choices").append(el("p", { class: "empty" }, "No avatar has a live grant."));
  say($("status"), `${deployments.length} deployment(s).`);
}

$("deployment-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("deployment-name").value.trim();
  const chosen = [...document.querySelectorAll("#avatar-choices input:checked")].map((box) => box.value);
  const body = { name, description: $("deployment-description").value, avatars: chosen };
  const exists = (window.likeness.portal.deployments || []).some((d) => d.name === name);
  try {
    if (exists) await api(`/deployments/${encodeURIComponent(name)}`, { method: "PUT", body });
    else await api("/deployments", { method: "POST", body });
    say($("status"), `Deployment ${name} saved.`, "ok");
    await load();
  } catch (err) {
    say($("status"), err.message, "error");
  }
});

startPage("operator")
  .then(async (user) => {
    if (!user) return;
    if (!user.roles.includes("operator")) {
      say($("status"), "Only operators manage deployments.", "error");
      return;
    }
    await load();
    window.likeness.portal.ready = true;
  })
  .catch((err) => {
    window.likeness.portal.error = err.message;
    say($("status"), err.message, "error");
  });
