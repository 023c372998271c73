// The agent list: each card's calls in progress, from GET /api/calls/active every 5 s.
// Roles that may not read the configuration get 403: the cards then stay as they are.

async function refresh() {
  let data;
  try {
    const resp = await fetch("/api/calls/active", { credentials: "same-origin" });
    if (resp.status !== 200) return false;
    data = await resp.json();
  } catch {
    return true; // a network blip: try again
  }
  for (const row of data.agents) {
    const line = document.querySelector(`[data-agent="${CSS.escape(row.agent)}"] .live`);
    if (!line) continue;
    const limit = row.limit === null ? "" : ` (limit ${row.limit})`;
    line.textContent = `${row.calls} call${row.calls === 1 ? "" : "s"} in progress${limit}`;
  }
  return true;
}

async function loop() {
  if (await refresh()) setTimeout(loop, 5000);
}

loop();
