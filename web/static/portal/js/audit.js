// The audit log (auditors): entries page by page, and a check of the hash chain.

import { api, el, say, setText, startPage, when } from "./api.js";

const $ = (id) => document.getElementById(id);
let last = 0;

async function verify() {
  const result = await api("/audit/verify");
  window.likeness.portal.verify = result;
  say(
    $("verify-result"),
    result.intact ? "The log is intact: no entry was changed or removed." : `The log is broken in ${result.problems.length} place(s).`,
  );
  $("problems").replaceChildren(...result.problems.map((p) => el("li", {}, `#${p.seq}: ${p.message}`)));
}

async function more() {
  const page = await api("/audit", { query: { after: String(last), limit: "100" } });
  const rows = page.entries.map((e) =>
    el(
      "tr",
      {},
      el("td", {}, String(e.seq)),
      el("td", {}, when(e.at)),
      el("td", {}, e.actor),
      el("td", {}, e.action),
      el("td", {}, e.subject ? e.subject.slice(0, 8) : "—"),
      el("td", {}, el("code", {}, JSON.stringify(e.details))),
    ),
  );
  $("entries").append(...rows);
  if (page.entries.length) last = page.entries[page.entries.length - 1].seq;
  window.likeness.portal.entries = (window.likeness.portal.entries || 0) + page.entries.length;
  $("more").hidden = last >= page.head_seq;
  setText($("status"), `${last} of ${page.head_seq} entries shown.`);
}

$("verify").addEventListener("click", () => verify().catch((err) => say($("status"), err.message, "error")));
$("more").addEventListener("click", () => more().catch((err) => say($("status"), err.message, "error")));

startPage("audit")
  .then(async (user) => {
    if (!user) return;
    if (!user.roles.includes("auditor")) {
      say($("status"), "Only auditors read the audit log.", "error");
      return;
    }
    await Promise.all([verify(), more()]);
    window.likeness.portal.ready = true;
  })
  .catch((err) => {
    window.likeness.portal.error = err.message;
    say($("status"), err.message, "error");
  });
