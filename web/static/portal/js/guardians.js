// Guardians: who may act for whom, on what basis; add (the person themself, or an operator
// with a basis) and remove links.

import { api, el, say, startPage, when } from "./api.js";

const $ = (id) => document.getElementById(id);
let user = null;

function linkCard(link) {
  const mineAsGuardian = link.guardian_id === user.id;
  const title = mineAsGuardian
    ? `You act for ${link.subject_name}`
    : `${link.guardian_name} (${link.guardian_email}) acts for ${link.subject_name}`;
  const card = el(
    "li",
    { class: "card link", dataset: { linkId: link.id } },
    el("h3", {}, title),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "Basis"),
      el("dd", { class: "basis" }, link.basis),
      el("dt", {}, "Since"),
      el("dd", {}, when(link.created_at)),
    ),
  );
  const remove = el("button", { type: "button", class: "button" }, mineAsGuardian ? "Stop acting for them" : "Remove");
  remove.addEventListener("click", async () => {
    if (!window.confirm("Remove this guardian link?")) return;
    try {
      await api(`/guardians/${encodeURIComponent(link.id)}`, { method: "DELETE" });
      say($("status"), "Link removed.", "ok");
      await load();
    } catch (err) {
      say($("status"), err.message, "error");
    }
  });
  card.append(remove);
  return card;
}

async function load() {
  const { links } = await api("/guardians");
  window.likeness.portal.links = links;
  const list = $("links");
  list.replaceChildren(...links.map(linkCard));
  if (!links.length) list.append(el("li", { class: "empty" }, "No guardian link."));
  say($("status"), `${links.length} link(s).`);
}

async function setUpForm() {
  const operator = user.roles.includes("operator");
  $("add-panel").hidden = !(operator || user.subject_id);
  if (operator) {
    const { subjects } = await api("/subjects");
    const select = $("guardian-subject");
    select.replaceChildren(...subjects.map((s) => el("option", { value: s.id }, `${s.display_name} (${s.id.slice(0, 8)})`)));
    $("subject-field").hidden = false;
    $("guardian-basis").required = true;
  }
}

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { email: $("guardian-email").value, basis: $("guardian-basis").value };
  if (!$("subject-field").hidden) body.subject = $("guardian-subject").value;
  try {
    await api("/guardians", { method: "POST", body });
    $("guardian-email").value = "";
    $("guardian-basis").value = "";
    say($("status"), "Guardian linked.", "ok");
    await load();
  } catch (err) {
    say($("status"), err.message, "error");
  }
});

startPage("guardians")
  .then(async (signedIn) => {
    if (!signedIn) return;
    user = signedIn;
    await setUpForm();
    await load();
    window.likeness.portal.ready = true;
  })
  .catch((err) => {
    window.likeness.portal.error = err.message;
    say($("status"), err.message, "error");
  });
