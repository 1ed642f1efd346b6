// My grants: what each permission allows, its status, where and when the face was used,
// and revoke (one click, then confirm).

import { api, el, say, startPage, when } from "./api.js";

const $ = (id) => document.getElementById(id);
let pending = null; // the grant the dialog is about

function facts(pairs) {
  const list = el("dl", { class: "facts" });
  for (const [term, value] of pairs) list.append(el("dt", {}, term), el("dd", {}, value));
  return list;
}

function usageBlock(usage) {
  if (!usage.total) return el("p", { class: "empty" }, "Not used yet.");
  const rows = usage.by_deployment.map((d) =>
    el("tr", {}, el("td", {}, d.deployment), el("td", {}, String(d.count))),
  );
  const recent = usage.recent.map((u) =>
    el("tr", {}, el("td", {}, when(u.at)), el("td", {}, u.deployment)),
  );
  return el(
    "div",
    { class: "usage" },
    el("p", {}, `Used ${usage.total} time(s), last on ${when(usage.last_at)}.`),
    el(
      "table",
      { class: "usage-table" },
      el("caption", { class: "hint" }, "Uses per deployment"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Where"), el("th", { scope: "col" }, "Times"))),
      el("tbody", {}, rows),
    ),
    el(
      "details",
      {},
      el("summary", {}, "Most recent uses"),
      el(
        "table",
        { class: "usage-table" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "When"), el("th", { scope: "col" }, "Where"))),
        el("tbody", {}, recent),
      ),
    ),
  );
}

function grantCard(g) {
  const title = `Photo ${g.avatar_id.slice(0, 12)}… — ${g.allow_voice ? "face and voice" : "face"}`;
  const card = el(
    "li",
    { class: "card grant", dataset: { grantId: g.id, status: g.status } },
    el("h3", {}, title, " ", el("span", { class: "badge", dataset: { status: g.status } }, g.status)),
    facts([
      ["Where", g.deployments.join(", ")],
      ["For", g.purposes.join(", ")],
      ["Until", when(g.expires_at)],
      ["Given", `${when(g.issued_at)} by ${g.granted_by === "subject" ? "the person" : "a guardian"}`],
      ...(g.basis ? [["Basis", g.basis]] : []),
      ...(g.revocation
        ? [["Revoked", `${when(g.revocation.revoked_at)}${g.revocation.reason ? " — " + g.revocation.reason : ""}`]]
        : []),
    ]),
    usageBlock(g.usage),
  );
  if (g.status === "active") {
    const button = el("button", { type: "button", class: "button button-danger revoke" }, "Revoke");
    button.addEventListener("click", () => {
      pending = g;
      say($("revoke-text"), `${title}, for ${g.deployments.join(", ")} until ${when(g.expires_at)}.`);
      $("revoke-reason").value = "";
      $("revoke-dialog").showModal();
    });
    card.append(button);
  }
  return card;
}

async function load() {
  const [{ grants }, { subjects }] = await Promise.all([api("/grants"), api("/subjects")]);
  const state = window.likeness.portal;
  state.grants = grants;
  const box = $("grant-lists");
  box.replaceChildren();
  for (const person of subjects) {
    const mine = grants.filter((g) => g.subject === person.id);
    const heading =
      person.relation === "self" ? "Your permissions" : `Permissions of ${person.display_name} (you are their guardian)`;
    const list = el("ul", { class: "cards" }, mine.map(grantCard));
    if (!mine.length) list.append(el("li", { class: "empty" }, "No permission given yet."));
    box.append(el("section", { class: "panel", dataset: { subject: person.id } }, el("h2", {}, heading), list));
  }
  say($("status"), `${grants.length} permission(s).`);
}

$("revoke-dialog").addEventListener("close", async () => {
  const dialog = $("revoke-dialog");
  if (dialog.returnValue !== "confirm" || !pending) return;
  const grant = pending;
  pending = null;
  try {
    const done = await api(`/grants/${encodeURIComponent(grant.id)}/revoke`, {
      method: "POST",
      body: { confirm: true, reason: $("revoke-reason").value },
    });
    say($("status"), done.data_deleted ? "Revoked. No permission is left, so your face data was deleted." : "Revoked.", "ok");
    window.likeness.portal.revoked = grant.id;
    await load();
  } catch (err) {
    say($("status"), err.message, "error");
  }
});

startPage("grants")
  .then(async (user) => {
    if (!user) return;
    await load();
    window.likeness.portal.ready = true;
  })
  .catch((err) => {
    window.likeness.portal.error = err.message;
    say($("status"), err.message, "error");
  });
