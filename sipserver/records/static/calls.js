// The Calls page: GET /api/calls with the filters (agent, from, to, q), 25 rows a page, paged
// with the answer's cursor. The filters live in the address (?agent=&from=&to=&q=) so a list
// can be linked to and the back button works. Text from the server is only ever set as text.

const LIMIT = 25;
const form = document.getElementById("filters");
const fields = ["agent", "from", "to", "q"].map((id) => document.getElementById(id));
let cursors = [null]; // the cursor of each page seen so far (page 1: none)
let page = 0;
let nextCursor = null;

// "2026-12-06T23:15" (datetime-local, the browser's zone) -> epoch seconds, or "".
function epochOf(local) {
  if (!local) return "";
  const ms = new Date(local).getTime();
  return Number.isNaN(ms) ? "" : String(Math.floor(ms / 1000));
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

function formatTime(epoch) {
  return new Date(epoch * 1000).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  tr.append(td);
  return td;
}

function row(call) {
  const tr = document.createElement("tr");
  tr.dataset.call = call.id;
  const th = document.createElement("th");
  th.scope = "row";
  const link = document.createElement("a");
  link.href = `/dashboard/calls/${encodeURIComponent(call.id)}`;
  link.textContent = formatTime(call.started_at);
  th.append(link);
  tr.append(th);
  cell(tr, call.agent);
  cell(tr, call.ingress);
  cell(tr, call.caller || "—", "number");
  cell(tr, call.called || "—", "number");
  cell(tr, call.ended_at === null ? "in progress" : formatDuration(call.duration));
  const ended = call.ended_by ? `${call.ended_by}${call.end_reason ? ` (${call.end_reason})` : ""}` : "—";
  cell(tr, call.ended_at === null ? "—" : ended);
  cell(tr, call.recording ? "yes" : "no");
  return tr;
}

function query() {
  const params = new URLSearchParams();
  const [agent, from, to, q] = fields.map((f) => f.value.trim());
  if (agent) params.set("agent", agent);
  if (from) params.set("from", epochOf(from));
  if (to) params.set("to", epochOf(to));
  if (q) params.set("q", q);
  return params;
}

function showError(text) {
  const box = document.getElementById("list-error");
  box.textContent = text;
  box.hidden = !text;
}

async function load() {
  const params = query();
  params.set("limit", String(LIMIT));
  if (cursors[page]) params.set("cursor", cursors[page]);
  document.getElementById("summary").textContent = "Loading…";
  let resp;
  let data = {};
  try {
    resp = await fetch(`/api/calls?${params}`, { credentials: "same-origin", cache: "no-store" });
    data = await resp.json().catch(() => ({}));
  } catch {
    showError("The server did not answer; try again.");
    return;
  }
  if (resp.status === 401) {
    location.assign(`/dashboard/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    return;
  }
  if (resp.status !== 200) {
    showError(data.error || `The calls could not be listed (the server answered ${resp.status}).`);
    document.getElementById("summary").textContent = "";
    return;
  }
  showError("");
  const calls = data.calls || [];
  nextCursor = data.cursor || null;
  const tbody = document.getElementById("calls-rows");
  const rows = calls.map(row);
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, page === 0 ? "No call matches." : "No more calls.", "empty");
    td.colSpan = 8;
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  const first = page * LIMIT + 1;
  const range = calls.length === 1 && page === 0 ? "1 call" : `Calls ${first}–${first + calls.length - 1}`;
  document.getElementById("summary").textContent = calls.length
    ? `${range}${nextCursor ? ", more on the next page" : ""}.`
    : "No call matches these filters.";
  document.getElementById("page-number").textContent = `Page ${page + 1}`;
  document.getElementById("first").disabled = page === 0;
  document.getElementById("previous").disabled = page === 0;
  document.getElementById("next").disabled = !nextCursor;
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

// The filters as the address's query (epoch seconds shown back as local times).
function fromAddress() {
  const params = new URLSearchParams(location.search);
  const local = (epoch) => {
    if (!epoch || Number.isNaN(Number(epoch))) return "";
    const d = new Date(Number(epoch) * 1000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };
  const [agent, from, to, q] = fields;
  if (params.has("agent")) agent.value = params.get("agent");
  from.value = local(params.get("from"));
  to.value = local(params.get("to"));
  q.value = params.get("q") || "";
}

function restart() {
  cursors = [null];
  page = 0;
  const params = query();
  history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
  load();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  restart();
});
document.getElementById("agent").addEventListener("change", restart);
document.getElementById("clear").addEventListener("click", () => {
  for (const f of fields) f.value = "";
  restart();
});
document.getElementById("next").addEventListener("click", () => {
  if (!nextCursor) return;
  cursors[page + 1] = nextCursor;
  page += 1;
  load();
});
document.getElementById("previous").addEventListener("click", () => {
  if (page === 0) return;
  page -= 1;
  load();
});
document.getElementById("first").addEventListener("click", () => {
  page = 0;
  load();
});

fromAddress();
load();
