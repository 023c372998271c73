// The live page: calls per agent, SIP registrations and call workers, from the console API
// every 3 s. Text from the server is only ever set as text. The status region announces a
// change in a count (calls, registrations, workers ready), never a plain refresh.

const PERIOD_MS = 3000;
const previous = {};
let registrations = [];

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function fill(tbodyId, items, columns, render) {
  const tbody = document.getElementById(tbodyId);
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    render(tr, item);
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, "None", "empty");
    td.colSpan = columns;
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

async function get(path) {
  const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    location.assign(`/dashboard/login?next=${encodeURIComponent(location.pathname)}`);
    throw new Error("logged out");
  }
  const data = await resp.json().catch(() => ({}));
  if (resp.status !== 200) throw new Error(data.error || `${path} answered ${resp.status}`);
  return data;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function expiresIn(reg) {
  const left = Math.round((Date.parse(reg.expires_at) - Date.now()) / 1000);
  return left > 0 ? `${left} s` : "expired";
}

function showCalls(data) {
  const byIngress = Object.entries(data.by_ingress)
    .map(([ingress, n]) => `${ingress} ${n}`)
    .join(", ");
  const max = data.max_calls === null ? "" : ` of at most ${data.max_calls}`;
  document.getElementById("calls-summary").textContent =
    `${plural(data.total, "call")} in progress${max}` + (byIngress ? ` (${byIngress})` : "");
  fill("calls-rows", data.agents, 4, (tr, row) => {
    tr.dataset.agent = row.agent;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = row.agent;
    tr.append(th);
    cell(tr, String(row.calls), "calls");
    cell(tr, row.limit === null ? "no limit" : String(row.limit), "limit");
    const list = document.createElement("ul");
    list.className = "call-list";
    for (const call of row.in_progress || []) {
      const item = document.createElement("li");
      item.dataset.call = call.id;
      const started = new Date(call.started_at).toLocaleTimeString();
      item.textContent = `${call.id} · ${call.ingress} · since ${started}`;
      list.append(item);
    }
    cell(tr, "", "call-cell").append(list);
  });
  return data.total;
}

function showRegistrations(data) {
  registrations = data.registrations;
  document.getElementById("registrations-summary").textContent =
    `${plural(registrations.length, "registered contact")}`;
  fill("registrations-rows", registrations, 5, (tr, reg) => {
    tr.dataset.aor = reg.aor;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = reg.aor;
    tr.append(th);
    cell(tr, reg.contact, "contact");
    cell(tr, reg.source, "source");
    cell(tr, reg.agent || "", "agent");
    const td = cell(tr, expiresIn(reg), "expires");
    td.dataset.expiresAt = reg.expires_at;
  });
  return registrations.length;
}

function showWorkers(data) {
  const ready = data.workers.filter((w) => w.ready).length;
  document.getElementById("workers-summary").textContent =
    `${plural(data.workers.length, "worker")} (${ready} ready), engine ${data.engine}, ` +
    `${plural(data.calls, "call")} held` + (data.capacity ? ` of ${data.capacity}` : "");
  fill("workers-rows", data.workers, 7, (tr, w) => {
    tr.dataset.worker = w.id;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = w.id;
    tr.append(th);
    cell(tr, w.engine);
    const state = w.ready ? "ready" : w.up ? "starting" : "down";
    cell(tr, state, w.ready ? "state state-ready" : "state state-waiting");
    const load = cell(tr, "", "load-cell");
    const box = document.createElement("div");
    box.className = "load";
    if (w.capacity) {
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = w.capacity;
      meter.value = w.calls;
      meter.high = Math.max(1, Math.floor(w.capacity * 0.8));
      meter.setAttribute("aria-label", `${w.id}: ${w.calls} of ${w.capacity} calls`);
      box.append(meter);
    }
    const text = document.createElement("span");
    text.className = "calls";
    text.textContent = w.capacity ? `${w.calls} / ${w.capacity}` : `${w.calls}`;
    box.append(text);
    load.append(box);
    cell(tr, w.pid === null ? "" : String(w.pid));
    cell(tr, w.cpu_seconds === null ? "" : w.cpu_seconds.toFixed(1), "cpu");
    const late = w.counters.late_frames;
    cell(tr, late === null ? "" : String(late), "late");
  });
  return { ready, held: data.calls };
}

function announce(counts) {
  const names = {
    calls: "calls in progress",
    registrations: "registered contacts",
    ready: "workers ready",
    held: "calls held by workers",
  };
  const changes = [];
  for (const [key, value] of Object.entries(counts)) {
    if (value === undefined) continue;
    if (key in previous && previous[key] !== value) changes.push(`${names[key]}: ${value}`);
    previous[key] = value;
  }
  if (changes.length) document.getElementById("announce").textContent = changes.join("; ");
}

async function refresh() {
  const results = await Promise.allSettled([
    get("/api/calls/active").then(showCalls),
    get("/api/registrations").then(showRegistrations),
    get("/api/workers").then(showWorkers),
  ]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  const error = document.getElementById("live-error");
  error.hidden = failed.length === 0;
  error.textContent = failed.join("; ");
  const [calls, regs, workers] = results.map((r) => (r.status === "fulfilled" ? r.value : undefined));
  announce({ calls, registrations: regs, ready: workers?.ready, held: workers?.held });
  document.getElementById("updated").textContent =
    `Last update ${new Date().toLocaleTimeString()}.`;
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

function tick() {
  for (const td of document.querySelectorAll("#registrations-rows td.expires")) {
    td.textContent = expiresIn({ expires_at: td.dataset.expiresAt });
  }
}

async function loop() {
  try {
    await refresh();
  } finally {
    setTimeout(loop, PERIOD_MS);
  }
}

loop();
setInterval(tick, 1000);
