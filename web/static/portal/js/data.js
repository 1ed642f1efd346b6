// My data: usage counts, download everything, delete the face data (typed confirmation).

import { api, el, say, startPage, when } from "./api.js";

const $ = (id) => document.getElementById(id);

function subjectId() {
  return $("subject").value;
}

async function showUsage() {
  const { usage } = await api(`/subjects/${encodeURIComponent(subjectId())}/usage`);
  window.likeness.portal.usage = usage;
  say(
    $("usage-total"),
    usage.total ? `Used ${usage.total} time(s), from ${when(usage.first_at)} to ${when(usage.last_at)}.` : "Never used.",
  );
  $("usage-rows").replaceChildren(
    ...usage.by_deployment.map((d) => el("tr", {}, el("td", {}, d.deployment), el("td", {}, String(d.count)))),
  );
}

$("subject").addEventListener("change", () => showUsage().catch((err) => say($("status"), err.message, "error")));

$("download").addEventListener("click", async () => {
  try {
    const data = await api(`/subjects/${encodeURIComponent(subjectId())}/export`);
    window.likeness.portal.exported = data;
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `likeness-data-${subjectId().slice(0, 12)}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    say($("status"), "Your data was downloaded.", "ok");
  } catch (err) {
    say($("status"), err.message, "error");
  }
});

$("delete-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const done = await api(`/subjects/${encodeURIComponent(subjectId())}/delete`, {
      method: "POST",
      body: { confirm: $("delete-confirm").value },
    });
    $("delete-confirm").value = "";
    window.likeness.portal.deleted = done;
    say($("status"), `Deleted: ${done.revoked.length} permission(s) revoked, ${done.avatars.length} photo(s) erased.`, "ok");
    await showUsage();
  } catch (err) {
    say($("status"), err.message, "error");
  }
});

startPage("data")
  .then(async (user) => {
    if (!user) return;
    const { subjects } = await api("/subjects");
    $("subject").replaceChildren(
      ...subjects.map((s) => el("option", { value: s.id }, s.relation === "self" ? `${s.display_name} (you)` : s.display_name)),
    );
    if (subjects.length) await showUsage();
    say($("status"), subjects.length ? "" : "There is no personal data to show for this account.");
    window.likeness.portal.ready = true;
  })
  .catch((err) => {
    window.likeness.portal.error = err.message;
    say($("status"), err.message, "error");
  });
