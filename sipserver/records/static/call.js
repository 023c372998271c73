// The call page: the record from GET /api/calls/{id} as facts, the voice-to-voice summary,
// the conversation (caller left, agent right, events between) and, when the call was
// recorded, a player kept in step with it: selecting a line plays from its offset and the
// line being played is highlighted. The latency timeline is already in the page (drawn by the
// server). Text from the server is only ever set as text.

const id = document.body.dataset.id;
const canDelete = document.body.dataset.canDelete === "true";
const audio = document.getElementById("audio");
let lines = []; // {offset, end, node} of each transcript line, in order

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(text) {
  const box = document.getElementById("call-error");
  box.textContent = text;
  box.hidden = !text;
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function when(epoch) {
  if (epoch === null || epoch === undefined) return "—";
  return new Date(epoch * 1000).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function ms(value) {
  return typeof value === "number" ? `${Math.round(value).toLocaleString()} ms` : "—";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

function showFacts(call) {
  const facts = [
    ["Agent", call.agent],
    ["Way in", call.ingress],
    ["Caller", call.caller || "—", true],
    ["Called", call.called || "—", true],
  ];
  if (call.sip_call_id) facts.push(["SIP Call-ID", call.sip_call_id, true]);
  if (call.call_sid) facts.push(["Twilio CallSid", call.call_sid, true]);
  facts.push(
    ["Started", when(call.started_at)],
    ["Answered", call.answered_at === null ? "never (refused)" : when(call.answered_at)],
    ["Ended", call.ended_at === null ? "in progress" : when(call.ended_at)],
    ["Duration", duration(call.duration)],
    ["End reason", call.end_reason || "—"],
    ["Ended by", call.ended_by || "—"],
    ["Codec", call.codec || "—"],
  );
  const media = call.media || {};
  facts.push([
    "Media (caller → server)",
    `${media.lost ?? 0} lost · ${media.concealed ?? 0} concealed · ${media.late ?? 0} late`,
  ]);
  const rec = call.recording;
  facts.push([
    "Recording",
    rec
      ? `${rec.format}, ${rec.channels}, ${rec.sample_rate} Hz, ${rec.duration.toFixed(1)} s, ` +
        `${Math.max(1, Math.round(rec.bytes / 1024))} KiB`
      : "none",
  ]);
  document.getElementById("facts").replaceChildren(
    ...facts.map(([term, value, mono]) =>
      el("div", {}, el("dt", { text: term }), el("dd", { text: value, className: mono ? "mono" : "" })),
    ),
  );
}

function showSummary(summary) {
  const call = (summary && summary.call) || {};
  const agent = (summary && summary.agent_24h) || {};
  document.getElementById("call-p50").textContent = ms(call.p50);
  document.getElementById("call-p95").textContent = ms(call.p95);
  document.getElementById("agent-p50").textContent = ms(agent.p50);
  document.getElementById("agent-p95").textContent = ms(agent.p95);
}

const INTERRUPTIONS = {
  paused: "The caller spoke over the agent: the reply paused",
  resumed: "The reply resumed (the caller said nothing)",
  false: "False interruption: no words followed",
  interrupted: "The caller interrupted the agent",
};

// The words of a non-transcript event, and its class; null: not shown in the conversation.
function eventNote(e) {
  switch (e.type) {
    case "dtmf": return [`DTMF key ${e.digit}`, "dtmf"];
    case "interruption": return [INTERRUPTIONS[e.kind] || `Interruption: ${e.kind}`, "interruption"];
    case "tool_call": {
      const args = e.arguments === undefined ? "" : JSON.stringify(e.arguments);
      return [`Tool ${e.name}(${args})${e.result ? ` → ${e.result}` : ""}`, "tool"];
    }
    case "suggestion": return [`Suggestion: ${e.title ? `${e.title} — ` : ""}${e.text}`, "suggestion"];
    case "error": return [`Error (${e.stage || "?"}): ${e.error}`, "error"];
    case "end": return [`Call ended: ${e.reason || "?"}${e.ended_by ? `, by ${e.ended_by}` : ""}`, "end"];
    default: return null; // turns are in the timeline
  }
}

function seek(offset, node) {
  if (!audio.src) return;
  audio.currentTime = offset;
  highlight(node);
  audio.play().catch(() => {}); // autoplay may be refused: the position still moved
}

function item(e, recorded) {
  const tag = recorded ? "button" : "div";
  if (e.type === "transcript") {
    const speaker = ["caller", "agent"].includes(e.speaker) ? e.speaker : "mixed";
    const who = speaker === "caller" ? "Caller" : speaker === "agent" ? "Agent" : "Both";
    const body = el(tag, { className: "line", type: recorded ? "button" : undefined },
      el("span", { className: "who-said", text: who }),
      el("span", { className: "said", text: e.text || "" }),
    );
    if (e.interrupted) body.append(el("span", { className: "tag", text: "interrupted" }));
    body.append(el("span", { className: "at", text: clock(e.offset) }));
    if (recorded) {
      body.setAttribute("aria-label", `${who} at ${clock(e.offset)}: ${e.text || ""}${e.interrupted ? " (interrupted)" : ""}. Play from here.`);
      body.addEventListener("click", () => seek(e.offset, body));
    }
    lines.push({ offset: e.offset, end: typeof e.end === "number" ? e.end : null, node: body });
    return el("li", { className: speaker, "data-offset": String(e.offset) }, body);
  }
  const note = eventNote(e);
  if (!note) return null;
  const body = el(tag, { className: `note ${note[1]}`, type: recorded ? "button" : undefined },
    el("span", { text: note[0] }), el("span", { className: "at", text: clock(e.offset) }));
  if (recorded) body.addEventListener("click", () => seek(e.offset, null));
  return el("li", { className: "event", "data-type": e.type, "data-offset": String(e.offset) }, body);
}

function highlight(node) {
  for (const line of lines) {
    if (line.node === node) line.node.setAttribute("aria-current", "true");
    else line.node.removeAttribute("aria-current");
  }
  document.body.dataset.playing = node ? String(lines.findIndex((l) => l.node === node)) : "";
}

// The line being played: the last one started at or before the player's time, unless it
// ended (when its end is known) more than a moment ago.
function follow() {
  const t = audio.currentTime;
  let current = null;
  for (const line of lines) {
    if (line.offset <= t + 0.05) current = line;
    else break;
  }
  if (current && current.end !== null && t > current.end + 0.5) current = null;
  highlight(current ? current.node : null);
}

function showConversation(call) {
  const recorded = Boolean(call.recording);
  lines = [];
  const events = [...(call.events || [])].sort((a, b) => a.offset - b.offset);
  const items = events.map((e) => item(e, recorded)).filter(Boolean);
  if (items.length === 0) items.push(el("li", { className: "event" }, el("p", { className: "muted", text: "Nothing was said." })));
  document.getElementById("conversation").replaceChildren(...items);
  document.getElementById("no-recording").hidden = recorded;
  document.getElementById("player").hidden = !recorded;
  if (recorded) {
    audio.src = `/api/calls/${encodeURIComponent(call.id)}/recording`;
    audio.addEventListener("timeupdate", follow);
    audio.addEventListener("seeked", follow);
  }
}

function showWebhooks(webhooks) {
  const kinds = Object.entries(webhooks || {});
  document.getElementById("webhooks-section").hidden = kinds.length === 0;
  const rows = kinds.map(([kind, status]) => {
    const info = status && typeof status === "object" ? status : { status };
    const state = String(info.status ?? info.state ?? "unknown");
    const css = /^(delivered|ok|sent|success)/.test(state) ? "status-ok"
      : /^(failed|gave_up|error|expired)/.test(state) ? "status-failed" : "status-pending";
    const details = Object.entries(info)
      .filter(([key]) => key !== "status" && key !== "state")
      .map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`)
      .join(" · ");
    return el("tr", { "data-webhook": kind },
      el("th", { scope: "row", text: kind }),
      el("td", { className: css, text: state }),
      el("td", { text: details || "—" }));
  });
  document.getElementById("webhook-rows").replaceChildren(...rows);
}

async function remove() {
  if (!window.confirm("Delete this call's record and recording? This cannot be undone.")) return;
  const resp = await fetch(`/api/calls/${encodeURIComponent(id)}`, {
    method: "DELETE", credentials: "same-origin",
  }).catch(() => null);
  if (resp && (resp.status === 200 || resp.status === 204)) {
    location.assign("/dashboard/calls");
    return;
  }
  const data = resp ? await resp.json().catch(() => ({})) : {};
  showError(data.error || `The call was not deleted (${resp ? `the server answered ${resp.status}` : "no answer"}).`);
}

async function main() {
  let resp;
  let data = {};
  try {
    resp = await fetch(`/api/calls/${encodeURIComponent(id)}`, { credentials: "same-origin", cache: "no-store" });
    data = await resp.json().catch(() => ({}));
  } catch {
    showError("The server did not answer; reload the page to try again.");
    return;
  }
  if (resp.status === 401) {
    location.assign(`/dashboard/login?next=${encodeURIComponent(location.pathname)}`);
    return;
  }
  if (resp.status !== 200) {
    showError(data.error || `The call could not be read (the server answered ${resp.status}).`);
    return;
  }
  showFacts(data);
  showSummary(data.latency);
  showConversation(data);
  showWebhooks(data.webhooks);
  const del = document.getElementById("delete");
  del.hidden = !canDelete;
  del.addEventListener("click", remove);
  document.getElementById("announce").textContent = `Call loaded: ${lines.length} transcript lines.`;
  document.body.dataset.loaded = "true";
}

main();
