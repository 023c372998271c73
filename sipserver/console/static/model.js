// Create or edit one realtime voice model: GET/PUT/DELETE /api/models/{name} (docs/console.md).
// The type is chosen first; the form is drawn from the page's schema (sipserver/console/
// model_fields.py). A blank field is left out of the file, so its default applies.
import { api, canWrite, el, reason, setStatus, showErrors } from './console.js';

const schema = JSON.parse(document.getElementById('schema').textContent);
const form = document.getElementById('model-form');
const nameInput = document.getElementById('model-name');
const STAGES = { stt: 'Speech to text (STT)', llm: 'Language model (LLM)', tts: 'Text to speech (TTS)' };
const OPTION_HELP = {
  model: 'The provider\'s model name; blank: the provider\'s default.',
  language: 'Language code, e.g. en; blank: detected.',
  voice: 'The provider\'s voice name; blank: its default.',
};

let name = document.body.dataset.model;
let original = {};
let etag = null;
let type = null;
let credentials = [];
const player = new Audio();
const FILE = '__file__';

// --------------------------------------------------------------------------- values

function getPath(obj, key) {
  return key.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
}

function setPath(obj, key, value) {
  const parts = key.split('.');
  let o = obj;
  for (const part of parts.slice(0, -1)) {
    if (!o[part] || typeof o[part] !== 'object' || Array.isArray(o[part])) o[part] = {};
    o = o[part];
  }
  o[parts.at(-1)] = value;
}

function deletePath(obj, key) {
  const parts = key.split('.');
  const chain = [obj];
  for (const part of parts.slice(0, -1)) {
    const next = chain.at(-1)?.[part];
    if (!next || typeof next !== 'object') return;
    chain.push(next);
  }
  delete chain.at(-1)[parts.at(-1)];
  for (let i = chain.length - 1; i > 0; i -= 1) { // an emptied section goes too
    if (Object.keys(chain[i]).length === 0) delete chain[i - 1][parts[i - 1]];
  }
}

const isRef = (v) => v && typeof v === 'object' && ('from_env' in v || 'template' in v);
const refText = (v) => ('from_env' in v ? `from environment variable ${v.from_env}` : `template ${v.template}`);
// A value that comes from ${VAR} (or a template) is shown as such and kept, until the user
// presses Replace: then `make` draws the ordinary control in its place.
function orRef(id, value, make) {
  if (!isRef(value)) return make(value);
  const input = el('input', { id, value: refText(value), readonly: true, dataset: { keep: '1' } });
  input.makeControl = () => make(undefined);
  return input;
}
const kept = (id) => Boolean(document.getElementById(id)?.dataset.keep);

const shown = (v) => (typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v));

// -------------------------------------------------------------------------- drawing

function fieldBox(key, label, control, help, unit) {
  const helpId = `help-${key}`;
  const errId = `err-${key}`;
  control.setAttribute('aria-describedby', `${help ? helpId : ''} ${errId}`.trim());
  const row = el('div', { class: 'control' }, control);
  if (control.pathInput) row.append(control.pathInput);
  if (control.makeControl) {
    const replace = el('button', { type: 'button', class: 'replace', text: 'Replace', 'aria-label': `Replace the reference of ${label}` });
    replace.addEventListener('click', () => {
      const fresh = control.makeControl();
      fresh.setAttribute('aria-describedby', control.getAttribute('aria-describedby'));
      control.replaceWith(fresh);
      if (fresh.pathInput) fresh.after(fresh.pathInput);
      replace.remove();
      fresh.focus();
    });
    row.append(replace);
  }
  if (unit) row.append(el('span', { class: 'unit', text: unit }));
  const box = el('div', { class: 'field', dataset: { key } },
    el('label', { for: control.id, text: label }), row);
  if (help) box.append(el('p', { class: 'help', id: helpId, text: help }));
  box.append(el('p', { class: 'error', id: errId }));
  return box;
}

function selectOf(id, options, value) {
  const select = el('select', { id });
  for (const [v, text] of options) select.append(el('option', { value: v, text }));
  if (value !== undefined && value !== null && ![...select.options].some((o) => o.value === String(value))) {
    select.append(el('option', { value: String(value), text: String(value) }));
  }
  select.value = value === undefined || value === null ? '' : String(value);
  return select;
}

function settingControl(f, value) {
  return orRef(`f-${f.key}`, value, (v) => plainControl(f, v));
}

function plainControl(f, value) {
  const id = `f-${f.key}`;
  if (f.kind === 'boolean') {
    const v = value === undefined ? '' : String(value);
    return selectOf(id, [['', `Default (${shown(f.default)})`], ['true', 'yes'], ['false', 'no']], v);
  }
  if (f.kind === 'choice') {
    return selectOf(id, [['', `Default (${f.default})`], ...f.choices.map((c) => [c, c])], value);
  }
  if (f.kind === 'sound') return soundControl(f, value);
  const input = el('input', {
    id, type: 'number', inputmode: 'decimal',
    step: f.kind === 'integer' ? '1' : 'any',
    min: f.min ?? undefined, max: f.max ?? undefined,
    placeholder: `default ${f.default}`,
  });
  input.value = value === undefined || value === null ? '' : String(value);
  return input;
}

// A shipped clip, or the path of an audio file of the operator's (typed in beside the select).
function soundControl(f, value) {
  const id = `f-${f.key}`;
  const isFile = typeof value === 'string' && value !== '' && !f.choices.includes(value);
  const options = [['', `Default (${f.default})`], ...f.choices.map((c) => [c, c]), [FILE, 'Another audio file…']];
  const select = selectOf(id, options, isFile ? FILE : value);
  const path = el('input', {
    id: `${id}-path`, hidden: !isFile, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'path, relative to the configuration file', 'aria-label': `${f.label}: audio file path`,
  });
  path.value = isFile ? value : '';
  select.addEventListener('change', () => {
    path.hidden = select.value !== FILE;
    if (!path.hidden) path.focus();
  });
  select.pathInput = path;
  return select;
}

function soundPlayers() {
  const list = el('ul', { class: 'sounds', 'aria-label': 'Shipped sounds' });
  for (const sound of schema.sounds) {
    const button = el('button', {
      type: 'button', class: 'play', 'aria-label': `Play ${sound}`, dataset: { sound },
      text: '▶',
    });
    button.addEventListener('click', () => play(button, sound));
    list.append(el('li', {}, button, el('span', { text: ` ${sound}` })));
  }
  return el('div', { class: 'field' }, el('p', { class: 'help', text: 'Listen to the shipped sounds:' }), list);
}

function play(button, sound) {
  const src = `/dashboard/sounds/${encodeURIComponent(sound)}.wav`;
  const playing = !player.paused && player.src.endsWith(src);
  document.querySelectorAll('button.play').forEach((b) => { b.textContent = '▶'; b.setAttribute('aria-pressed', 'false'); });
  if (playing) { player.pause(); return; }
  player.src = src;
  player.dataset.sound = sound;
  player.play().then(() => { button.dataset.played = '1'; })
    .catch((err) => setStatus(`Cannot play ${sound}: ${err.message}`));
  button.textContent = '■';
  button.setAttribute('aria-pressed', 'true');
}
player.addEventListener('ended', () => document.querySelectorAll('button.play').forEach((b) => { b.textContent = '▶'; }));

function credentialSelect(value, required) {
  const options = [['', required ? 'Choose a credential' : '(none: the providers need no key)']];
  for (const c of credentials) options.push([c, c]);
  return orRef('f-credential', value, (v) => {
    const select = selectOf('f-credential', options, v);
    select.required = required;
    return select;
  });
}

function drawCustom(base) {
  const box = document.getElementById('custom');
  const providers = el('fieldset', { class: 'panel' }, el('legend', { text: 'Providers' }));
  for (const [stage, title] of Object.entries(STAGES)) {
    const raw = base[stage];
    const spec = typeof raw === 'string' || isRef(raw) ? { provider: raw } : (raw && typeof raw === 'object' ? raw : {});
    const group = el('fieldset', { class: 'stage', id: `stage-${stage}` }, el('legend', { text: title }));
    const names = schema.providers[stage].map((p) => [p, p]);
    const provider = orRef(`f-${stage}.provider`, spec.provider, (v) => selectOf(`f-${stage}.provider`, [['', 'Default (local)'], ...names], v));
    group.append(fieldBox(`${stage}.provider`, 'Provider', provider,
      'local runs on this machine, offline (no key); openai needs a credential with api_key.'));
    for (const option of schema.stage_options[stage]) {
      const input = orRef(`f-${stage}.${option}`, spec[option], (v) => {
        const plain = el('input', { id: `f-${stage}.${option}`, autocomplete: 'off', placeholder: 'provider default' });
        plain.value = v === undefined || v === null ? '' : String(v);
        return plain;
      });
      group.append(fieldBox(`${stage}.${option}`, option[0].toUpperCase() + option.slice(1), input, OPTION_HELP[option]));
    }
    group.append(el('p', { class: 'error', id: `err-${stage}` }));
    providers.append(group);
  }
  providers.append(fieldBox('credential', 'Credential', credentialSelect(base.credential, false),
    'The entry of Settings > Credentials the providers use (a stage may name its own in the file).'));
  box.replaceChildren(providers);
  for (const group of schema.groups) {
    const fs = el('fieldset', { class: 'panel', dataset: { group: group.title } }, el('legend', { text: group.title }));
    for (const f of group.fields) fs.append(fieldBox(f.key, f.label, settingControl(f, getPath(base, f.key)), f.help, f.unit));
    if (group.title === 'Audio Feedback') fs.append(soundPlayers());
    box.append(fs);
  }
}

function drawLiveKit(base) {
  const box = document.getElementById('livekit');
  const fs = el('fieldset', { class: 'panel' }, el('legend', { text: 'LiveKit Inference' }));
  const select = credentialSelect(base.credential, true);
  fs.append(fieldBox('credential', 'Credential', select,
    'Required: an entry of Settings > Credentials with api_key and api_secret.'));
  if (!credentials.length) {
    fs.append(el('p', { class: 'note' }, 'No credentials yet: ',
      el('a', { href: '/dashboard/settings/credentials', text: 'add one under Settings > Credentials' }), '.'));
  }
  for (const [stage, title] of Object.entries(STAGES)) {
    const input = orRef(`f-${stage}`, base[stage], (v) => {
      const plain = el('input', { id: `f-${stage}`, required: true, autocomplete: 'off', spellcheck: 'false' });
      plain.value = typeof v === 'string' ? v : '';
      return plain;
    });
    fs.append(fieldBox(stage, `${title} model ID`, input, schema.livekit_help[stage]));
  }
  box.replaceChildren(fs);
}

function choose(newType) {
  type = newType;
  const base = original.type === newType || (newType === 'custom' && !original.type && Object.keys(original).length)
    ? original : {};
  document.getElementById('custom').hidden = type !== 'custom';
  document.getElementById('livekit').hidden = type !== 'livekit_inference';
  document.getElementById(type === 'custom' ? 'livekit' : 'custom').replaceChildren();
  if (type === 'custom') drawCustom(base); else drawLiveKit(base);
  document.getElementById('actions').hidden = !canWrite();
  if (!canWrite()) lock();
}

function lock() {
  form.querySelectorAll('input, select, textarea').forEach((c) => { c.disabled = true; });
  form.querySelectorAll('button.replace').forEach((b) => { b.hidden = true; });
  document.getElementById('actions').hidden = true;
  if (!document.getElementById('read-only-banner')) document.getElementById('read-only-note').hidden = false;
}

// --------------------------------------------------------------------------- saving

function value(id) {
  const control = document.getElementById(id);
  return control ? control.value.trim() : '';
}

function collectCustom(body) {
  for (const stage of Object.keys(STAGES)) {
    const raw = body[stage];
    if (isRef(raw) && kept(`f-${stage}.provider`)) continue; // the whole stage from ${VAR}
    const spec = raw && typeof raw === 'object' && !isRef(raw) ? { ...raw } : {};
    const provider = kept(`f-${stage}.provider`) ? spec.provider : value(`f-${stage}.provider`);
    for (const option of schema.stage_options[stage]) {
      if (kept(`f-${stage}.${option}`)) continue;
      const v = value(`f-${stage}.${option}`);
      if (v) spec[option] = v; else delete spec[option];
    }
    delete spec.provider;
    if (!provider && Object.keys(spec).length === 0) delete body[stage];
    else if (Object.keys(spec).length === 0) body[stage] = provider;
    else body[stage] = { provider: provider || 'local', ...spec };
  }
  if (!kept('f-credential')) {
    const credential = value('f-credential');
    if (credential) body.credential = credential; else delete body.credential;
  }
  for (const group of schema.groups) {
    for (const f of group.fields) {
      const control = document.getElementById(`f-${f.key}`);
      if (!control || kept(control.id)) continue;
      const v = control.value === FILE ? control.pathInput.value.trim() : control.value.trim();
      if (v === '') { deletePath(body, f.key); continue; }
      let parsed = v;
      if (f.kind === 'boolean') parsed = v === 'true';
      else if (f.kind === 'number' || f.kind === 'integer' || f.key === 'vad.sample_rate') {
        parsed = Number.isFinite(Number(v)) ? Number(v) : v; // not a number: the server says why
      }
      setPath(body, f.key, parsed);
    }
  }
}

function collect() {
  const body = original.type === type || (type === 'custom' && !original.type) ? structuredClone(original) : {};
  body.type = type;
  if (type === 'custom') collectCustom(body);
  else {
    for (const key of ['credential', 'stt', 'llm', 'tts']) {
      if (kept(`f-${key}`)) continue;
      const v = value(`f-${key}`);
      if (v) body[key] = v; else delete body[key];
    }
  }
  return body;
}

function fieldOf(loc) {
  if (loc === 'name') return 'err-name';
  const prefix = `models.${name}`;
  if (loc !== prefix && !loc.startsWith(`${prefix}.`)) return null;
  let key = loc.slice(prefix.length + 1);
  while (key) {
    if (document.getElementById(`err-${key}`)) return `err-${key}`;
    key = key.includes('.') ? key.slice(0, key.lastIndexOf('.')) : '';
  }
  return null;
}

async function save(event) {
  event.preventDefault();
  document.getElementById('conflict').hidden = true;
  if (!name) {
    const wanted = nameInput.value.trim();
    if (!wanted) { showErrors([{ loc: 'name', msg: 'a name is required' }], fieldOf); return; }
    name = wanted;
  }
  if (!type) { showErrors([{ loc: 'type', msg: 'choose Custom or LiveKit Inference' }], () => 'err-type'); return; }
  setStatus('Saving…');
  const isNew = !document.body.dataset.model;
  const answer = await api('PUT', `/api/models/${encodeURIComponent(name)}`, collect(), etag);
  if (answer.status === 200) {
    showErrors([], fieldOf);
    original = answer.data.model;
    etag = answer.etag;
    const reload = answer.data.reload || {};
    let text = 'Saved.';
    if (reload.applied === false) text += ` The running server kept its configuration: ${(reload.errors || []).join('; ')}`;
    else if ((reload.restart_needed || []).length) text += ` Needs a restart: ${reload.restart_needed.join(', ')}.`;
    else text += ' Applied to the running server.';
    setStatus(text);
    if (isNew) {
      document.body.dataset.model = name;
      history.replaceState(null, '', `/dashboard/models/${encodeURIComponent(name)}`);
      document.getElementById('title').textContent = `Realtime voice model ${name}`;
      nameInput.disabled = true;
      document.getElementById('delete').hidden = false;
    }
    return;
  }
  if (answer.status === 422) {
    setStatus('Not saved: see the errors beside the fields.');
    showErrors(answer.data.errors, fieldOf);
  } else if (answer.status === 409) {
    setStatus('Not saved: the file changed.');
    document.getElementById('conflict').hidden = false;
  } else {
    setStatus(`Not saved: ${reason(answer)}`);
  }
  if (isNew) name = ''; // the name field may still change
}

async function remove() {
  if (!window.confirm(`Delete the model ${name}?`)) return;
  const answer = await api('DELETE', `/api/models/${encodeURIComponent(name)}`, undefined, etag);
  if (answer.status === 200) { location.href = '/dashboard/models'; return; }
  if (answer.status === 422) showErrors(answer.data.errors, () => null);
  else if (answer.status === 409) document.getElementById('conflict').hidden = false;
  setStatus(`Not deleted: ${answer.status === 422 ? 'see the errors above' : reason(answer)}`);
}

// ---------------------------------------------------------------------------- start

async function start() {
  const creds = await api('GET', '/api/credentials');
  if (creds.status === 200) {
    credentials = creds.data.credentials.map((c) => c.name);
    etag = creds.etag;
  }
  if (name) {
    const answer = await api('GET', `/api/models/${encodeURIComponent(name)}`);
    if (answer.status !== 200) {
      setStatus(`Cannot load the model: ${reason(answer)}`);
      form.hidden = true;
      return;
    }
    original = answer.data;
    etag = answer.etag;
    nameInput.value = name;
    nameInput.disabled = true;
    document.getElementById('delete').hidden = !canWrite();
    const t = original.type || 'custom';
    document.getElementById(t === 'custom' ? 'type-custom' : 'type-livekit').checked = true;
    choose(t);
  } else if (!canWrite()) {
    lock();
  }
  form.querySelectorAll('input[name=type]').forEach((radio) => {
    radio.addEventListener('change', () => choose(radio.value));
  });
  form.addEventListener('submit', save);
  document.getElementById('delete').addEventListener('click', remove);
  document.getElementById('reload').addEventListener('click', () => location.reload());
  document.body.dataset.ready = '1';
}

start();
