// Agent settings page: reads the agent with GET /api/agents/{slug}, saves it with PUT and
// If-Match (docs/console.md). The body sent is the mapping that was read, with the fields of
// this form changed: keys the form does not show (instructions, knowledge_base, ...) and
// values the user left alone (secrets, ${VAR} references) go back exactly as they were read.
// Text from the server is only ever set with textContent or .value.

const body = document.body;
let slug = body.dataset.slug;
const readOnlyReason = body.dataset.readOnly;
const form = document.getElementById("agent-form");
const $ = (id) => document.getElementById(id);

// The webhook kinds of agents[].webhooks: each is {url, secret}, or absent.
const HOOKS = ["call_started", "call_ended", "transcript"];
const BOOLS = ["realtime.enabled", "sip.enabled", "websocket.enabled", "listens.enabled", "recording.enabled"];
const TEXTS = [
  "name", "realtime.end_call_digit", "sip.username", "listens.forward_to",
  ...HOOKS.map((kind) => `webhooks.${kind}.url`),
];
const SELECTS = [
  "realtime.model", "sip.invite_auth", "sip.srtp", "listens.channel", "recording.channels", "recording.format",
];
const LISTS = ["sip.numbers", "sip.allowed_ips", "listens.numbers"];
const SECRETS = [
  "sip.password", "websocket.secret", "websocket.twilio_auth_token",
  ...HOOKS.map((kind) => `webhooks.${kind}.secret`),
];
const NUMBERS = ["max_concurrent_calls"];
const REMOVABLE = ["websocket.twilio_auth_token"]; // optional secrets the page can remove
const DEFAULTS = {
  "sip.invite_auth": "digest", "sip.srtp": "off", "listens.channel": "inbound",
  "recording.channels": "stereo", "recording.format": "opus",
};
const URLS = ["websocket", "twilio_webhook", "listens"];

let version = null; // the file's version this page edits (ETag)
let original = {}; // the agent's mapping as read (secrets masked, references as objects)
let shown = {}; // what each field showed when filled: unchanged fields keep the original

function lookup(obj, path) {
  let node = obj;
  for (const part of path.split(".")) {
    if (node === null || typeof node !== "object" || !(part in node)) return undefined;
    node = node[part];
  }
  return node;
}

function assign(obj, path, value) {
  const parts = path.split(".");
  let node = obj;
  for (const part of parts.slice(0, -1)) {
    if (node[part] === null || typeof node[part] !== "object") node[part] = {};
    node = node[part];
  }
  const last = parts[parts.length - 1];
  if (value === undefined) delete node[last];
  else node[last] = value;
}

function isReference(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function referenceText(value) {
  if (!isReference(value)) return value === undefined || value === null ? "" : String(value);
  if ("template" in value) return value.template;
  const fallback = "default" in value ? `:-${value.default}` : "";
  return "${" + value.from_env + fallback + "}";
}

function splitList(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s);
}

function current(key) {
  const input = $(key);
  if (BOOLS.includes(key)) return input.checked;
  return input.value;
}

// ------------------------------------------------------------------------------ fill

function fill(agent) {
  original = agent;
  shown = {};
  for (const key of BOOLS) $(key).checked = lookup(agent, key) === true;
  for (const key of [...TEXTS, ...NUMBERS]) $(key).value = referenceText(lookup(agent, key));
  for (const key of SELECTS) {
    const value = referenceText(lookup(agent, key)) || DEFAULTS[key] || "";
    const select = $(key);
    if (![...select.options].some((o) => o.value === value)) {
      select.append(new Option(`${value} (not in the list)`, value));
    }
    select.value = value;
  }
  for (const key of LISTS) {
    const items = lookup(agent, key);
    $(key).value = Array.isArray(items) ? items.map(referenceText).join("\n") : "";
  }
  for (const key of SECRETS) {
    const stored = lookup(agent, key);
    $(key).value = "";
    $(key).type = "password"; // Generate shows the new secret until it is saved
    let note = "";
    if (isReference(stored) && stored.from_env) {
      note = `From environment variable ${stored.from_env}. Leave empty to keep it.`;
    } else if (stored !== undefined && stored !== null) {
      note = "A value is stored (not shown). Leave empty to keep it.";
    }
    if (REMOVABLE.includes(key)) {
      $(`${key}-remove`).checked = false;
      $(`${key}-remove-row`).hidden = stored === undefined || stored === null;
    }
    $(`${key}-stored`).textContent = readOnlyReason ? note.replace(" Leave empty to keep it.", "") : note;
  }
  for (const key of [...BOOLS, ...TEXTS, ...NUMBERS, ...SELECTS, ...LISTS, ...SECRETS]) {
    shown[key] = current(key);
  }
  for (const key of [...TEXTS, ...SELECTS, ...NUMBERS]) referenceNote(key, lookup(agent, key));
  requiredModel();
  recordingChoices();
}

// A value the file takes from the environment says so beside its field; it stays a
// reference unless the field is edited.
function referenceNote(key, value) {
  let note = $(`${key}-ref`);
  if (!isReference(value)) {
    if (note) note.textContent = "";
    return;
  }
  if (!note) {
    note = Object.assign(document.createElement("p"), { id: `${key}-ref`, className: "stored" });
    $(key).after(note);
    $(key).setAttribute("aria-describedby", `${$(key).getAttribute("aria-describedby")} ${note.id}`);
  }
  note.textContent = value.from_env
    ? `From environment variable ${value.from_env}; it stays a reference unless you change it.`
    : "A template with environment variables; it stays as written unless you change it.";
}

function requiredModel() {
  const on = $("realtime.enabled").checked || $("listens.enabled").checked;
  $("model-required").hidden = !on;
  $("realtime.model").required = on;
}

// Channels and format mean something only while recording is on.
function recordingChoices() {
  const off = !$("recording.enabled").checked;
  for (const key of ["recording.channels", "recording.format"]) $(key).disabled = off || Boolean(readOnlyReason);
}

function showUrls(urls) {
  const needs = { websocket: "websocket", twilio_webhook: "websocket", listens: "listens" };
  for (const key of URLS) {
    const on = lookup(original, `${needs[key]}.enabled`) === true;
    const missing = on ? "available after saving" : `available after saving, with ${needs[key] === "listens" ? "AI Listens" : "the websocket"} enabled`;
    $(`url-${key}`).textContent = (urls && urls[key]) || missing;
  }
}

// --------------------------------------------------------------------------- collect

function collect() {
  const agent = structuredClone(original);
  delete agent.slug;
  const changed = (key) => current(key) !== shown[key];
  const keep = (key) => lookup(original, key);
  for (const key of BOOLS) if (changed(key)) assign(agent, key, $(key).checked);
  for (const key of [...TEXTS, ...SELECTS]) {
    if (!changed(key)) continue;
    const text = $(key).value.trim();
    if (text === referenceText(keep(key)) && keep(key) !== undefined) assign(agent, key, keep(key));
    else if (text === "") assign(agent, key, undefined);
    else assign(agent, key, text.includes("${") ? { template: text } : text);
  }
  for (const key of NUMBERS) {
    if (!changed(key)) continue;
    const text = $(key).value.trim();
    assign(agent, key, text === "" ? undefined : Number(text));
  }
  for (const key of LISTS) {
    if (!changed(key)) continue;
    const before = new Map((keep(key) || []).map((item) => [referenceText(item), item]));
    assign(agent, key, splitList($(key).value).map((item) => (before.has(item) ? before.get(item) : item)));
  }
  for (const key of SECRETS) {
    const text = $(key).value;
    if (text !== "") assign(agent, key, text);
    else if (REMOVABLE.includes(key) && $(`${key}-remove`).checked) assign(agent, key, null);
  }
  // A webhook whose URL was emptied (and no new secret typed) is removed; a new secret with
  // no URL is sent as is, so the API's 422 says the URL is missing.
  const hooks = agent.webhooks;
  if (hooks !== null && typeof hooks === "object" && !Array.isArray(hooks)) {
    for (const kind of HOOKS) {
      if ($(`webhooks.${kind}.url`).value.trim() === "" && $(`webhooks.${kind}.secret`).value === "") {
        delete hooks[kind];
      }
    }
    if (Object.keys(hooks).length === 0) delete agent.webhooks;
  }
  return agent;
}

// ---------------------------------------------------------------------------- errors

function clearErrors() {
  for (const p of form.querySelectorAll("p.error")) p.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  $("form-error").hidden = true;
  $("form-error").textContent = "";
  $("conflict").hidden = true;
}

function banner(text) {
  const box = $("form-error");
  box.append(Object.assign(document.createElement("p"), { textContent: text }));
  box.hidden = false;
}

// Key paths with no field of their own, shown beside the field that stands for them: a
// webhook entry (for example "Input should be a valid dictionary") beside its URL.
const FIELD_OF = {
  recording: "recording.enabled",
  ...Object.fromEntries(HOOKS.map((kind) => [`webhooks.${kind}`, `webhooks.${kind}.url`])),
};

// "agents[2].sip.allowed_ips[0]" -> the field "sip.allowed_ips" (its nearest shown parent).
function fieldOf(loc) {
  const match = /^agents\[\d+\]\.?(.*)$/.exec(loc);
  if (!match) return null;
  let path = match[1].replace(/\[\d+\]/g, "");
  while (path) {
    const key = FIELD_OF[path] || path;
    const field = form.querySelector(`.field[data-key="${CSS.escape(key)}"]`);
    if (field) return field;
    path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
  }
  return null;
}

function showErrors(errors) {
  let first = null;
  for (const { loc, msg } of errors) {
    const field = fieldOf(loc);
    if (!field) {
      banner(loc ? `${loc}: ${msg}` : msg);
      continue;
    }
    const key = field.dataset.key;
    const where = $(`${key}-error`);
    const index = /\[(\d+)\]$/.exec(loc);
    const line = index && LISTS.includes(key) ? `item ${Number(index[1]) + 1}: ${msg}` : msg;
    where.textContent = where.textContent ? `${where.textContent} ${line}` : line;
    $(key).setAttribute("aria-invalid", "true");
    first = first || $(key);
  }
  if (first) first.focus();
}

// ------------------------------------------------------------------------------- API

async function api(method, path, payload, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    location.href = `/dashboard/login?next=${encodeURIComponent(location.pathname)}`;
    throw new Error("login required");
  }
  const text = await resp.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { error: text };
  }
  const etag = (resp.headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
  return { status: resp.status, data, etag };
}

async function loadModels() {
  const { status, data } = await api("GET", "/api/models");
  if (status !== 200) return;
  const select = $("realtime.model");
  for (const model of data.models) {
    select.append(new Option(`${model.name} (${model.type === "livekit_inference" ? "LiveKit Inference" : "Custom"})`, model.name));
  }
}

async function load() {
  await loadModels();
  const list = await api("GET", "/api/agents");
  if (list.status !== 200) {
    banner(list.data.error || `the agents could not be read (${list.status})`);
    return false;
  }
  version = list.etag;
  if (!slug) {
    fill({});
    return true;
  }
  const { status, data, etag } = await api("GET", `/api/agents/${encodeURIComponent(slug)}`);
  if (status === 404) {
    banner(`There is no agent ${slug}.`);
    return false;
  }
  if (status !== 200) {
    banner(data.error || `the agent could not be read (${status})`);
    return false;
  }
  version = etag;
  fill(data);
  const summary = list.data.agents.find((a) => a.slug === slug);
  showUrls(summary ? summary.urls : {});
  return true;
}

async function save(event) {
  event.preventDefault();
  clearErrors();
  const target = slug || $("slug").value.trim();
  if (!slug) {
    if (!/^[a-z0-9][a-z0-9-]*$/.test(target)) {
      showErrors([{ loc: "agents[0].slug", msg: "lowercase letters, digits and '-', starting with a letter or digit" }]);
      return;
    }
    const list = await api("GET", "/api/agents");
    if (list.status === 200 && list.data.agents.some((a) => a.slug === target)) {
      showErrors([{ loc: "agents[0].slug", msg: `an agent ${target} exists already` }]);
      return;
    }
  }
  const status = $("save-status");
  status.textContent = "Saving…";
  $("save").disabled = true;
  let answer;
  try {
    answer = await api("PUT", `/api/agents/${encodeURIComponent(target)}`, collect(), {
      "If-Match": `"${version}"`,
    });
  } finally {
    $("save").disabled = false;
  }
  const { status: code, data } = answer;
  status.textContent = "";
  if (code === 422) {
    showErrors(data.errors || []);
    status.textContent = "Not saved: see the errors marked in the form.";
  } else if (code === 409) {
    $("conflict").hidden = false;
    status.textContent = "Not saved.";
  } else if (code !== 200) {
    banner(data.error || `saving failed (${code})`);
    status.textContent = "Not saved.";
  } else {
    version = data.version;
    if (!slug) {
      slug = target;
      history.replaceState(null, "", `/dashboard/agents/${encodeURIComponent(slug)}/settings`);
      $("slug").value = slug;
      $("slug").disabled = true;
      $("page-title").textContent = "Agent Settings";
      $("agent-title").textContent = slug;
    }
    fill(data.agent);
    showUrls(data.urls);
    const reload = data.reload || {};
    let text = "Saved.";
    if (reload.applied === false) text += ` The server kept its running configuration: ${(reload.errors || []).join("; ")}`;
    else if ((reload.restart_needed || []).length) text += ` Needs a restart: ${reload.restart_needed.join(", ")}.`;
    else text += " Applied.";
    status.textContent = text;
  }
}

// Fills the secret input `target` (the websocket's or a webhook's) with a new random secret.
async function generate(target) {
  const { status, data } = await api("POST", "/api/secrets/generate");
  if (status !== 200) {
    banner(data.error || `no secret was generated (${status})`);
    return;
  }
  const input = $(target);
  input.type = "text"; // the user copies it now; after saving it is write-only again
  input.value = data.secret;
  input.focus();
}

async function main() {
  if (readOnlyReason) {
    // Every input, not the fieldset: the "?" button stays usable.
    for (const input of $("fields").querySelectorAll("input, select, textarea")) input.disabled = true;
    $("actions").hidden = true;
    for (const button of form.querySelectorAll("#generate, button.generate")) button.hidden = true;
    const note = $("read-only-note");
    note.textContent = `${readOnlyReason} The fields below cannot be changed here.`;
    note.hidden = false;
  }
  if (slug) {
    $("slug").value = slug;
    $("slug").disabled = true;
  } else {
    $("page-title").textContent = "New agent";
  }
  for (const button of form.querySelectorAll("button.help-button")) {
    button.addEventListener("click", () => {
      const box = $(button.getAttribute("aria-controls"));
      box.hidden = !box.hidden;
      button.setAttribute("aria-expanded", String(!box.hidden));
    });
  }
  $("reload-page").addEventListener("click", () => location.reload());
  $("generate").addEventListener("click", () => generate("websocket.secret"));
  for (const button of form.querySelectorAll("button.generate")) {
    button.addEventListener("click", () => generate(button.dataset.for));
  }
  $("recording.enabled").addEventListener("change", recordingChoices);
  $("realtime.enabled").addEventListener("change", requiredModel);
  $("listens.enabled").addEventListener("change", requiredModel);
  form.addEventListener("submit", save);
  const ok = await load();
  $("loading").hidden = true;
  form.hidden = !ok;
  body.dataset.loaded = ok ? "yes" : "failed";
}

main();
