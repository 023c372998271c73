// AI Listens page: the agent's monitored calls (SSE), and the selected call's transcript and
// suggestions (SSE). Text from the server is only ever set with textContent.
"use strict";

const agent = document.body.dataset.agent;
const callsList = document.getElementById("calls");
const status = document.getElementById("status");
const transcript = document.getElementById("transcript");
const suggestions = document.getElementById("suggestions");
const drafting = document.getElementById("drafting");
const title = document.getElementById("call-title");
let selected = null;
let callSource = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

function renderCalls(calls) {
  callsList.replaceChildren();
  status.textContent = calls.length ? "" : "No call is being monitored.";
  for (const call of calls) {
    const button = el("button", call.call_id === selected ? "selected" : "");
    button.dataset.callId = call.call_id;
    button.append(el("strong", "", call.number || "unknown number"), el("br"),
      el("span", "muted", `since ${clock(call.started_at)} · ${call.channel}`));
    button.addEventListener("click", () => select(call));
    const li = el("li");
    li.append(button);
    callsList.append(li);
  }
  if (selected === null && calls.length) select(calls[0]);
  if (selected !== null && !calls.some((c) => c.call_id === selected)) {
    markEnded();
    selected = null;
    if (callSource) callSource.close();
    if (calls.length) select(calls[0]);
  }
}

function markEnded() {
  if (!title.classList.contains("ended")) title.textContent += " (ended)";
  title.classList.add("ended");
}

function select(call) {
  if (callSource) callSource.close();
  selected = call.call_id;
  for (const b of callsList.querySelectorAll("button")) {
    b.classList.toggle("selected", b.dataset.callId === selected);
  }
  title.textContent = `Transcript · ${call.number || call.call_id}`;
  title.classList.remove("ended");
  transcript.replaceChildren();
  suggestions.replaceChildren();
  drafting.hidden = true;
  const url = `/api/listens/${encodeURIComponent(agent)}/calls/${encodeURIComponent(call.call_id)}/events`;
  callSource = new EventSource(url);
  callSource.addEventListener("transcript", (e) => {
    const line = JSON.parse(e.data);
    const li = el("li", line.speaker);
    li.append(el("span", "speaker", line.speaker), el("span", "text", line.text));
    transcript.append(li);
    li.scrollIntoView({ block: "nearest" });
  });
  callSource.addEventListener("suggestion_delta", (e) => {
    drafting.hidden = false;
    drafting.textContent += JSON.parse(e.data).text;
  });
  callSource.addEventListener("suggestion", (e) => {
    const s = JSON.parse(e.data);
    drafting.hidden = true;
    drafting.textContent = "";
    const li = el("li", "suggestion");
    li.append(el("div", "text", s.text));
    const sources = s.sources.map((src) => `${src.title} (${src.source})`).join("; ");
    li.append(el("div", "sources", `Sources: ${sources}`));
    suggestions.prepend(li);
  });
  callSource.addEventListener("ended", () => {
    markEnded();
    callSource.close();
  });
}

const listSource = new EventSource(`/api/listens/${encodeURIComponent(agent)}/events`);
listSource.addEventListener("calls", (e) => renderCalls(JSON.parse(e.data)));
listSource.addEventListener("error", () => { status.textContent = "Reconnecting…"; });
