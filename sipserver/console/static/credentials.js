// Settings > Credentials: GET /api/credentials, PUT/DELETE /api/credentials/{name}.
// Values are write-only: the API sends key names only, the page shows them masked, and a
// blank value on a replace keeps the stored one.
import { api, canWrite, el, reason, setStatus, showErrors } from './console.js';

const KINDS = { livekit: ['api_key', 'api_secret'], api_key: ['api_key'] };
const form = document.getElementById('credential-form');
const nameInput = document.getElementById('cred-name');
const kindSelect = document.getElementById('cred-kind');
let etag = null;
let editing = null; // the name being replaced, or null when adding

function kindOf(keys) {
  const sorted = [...keys].sort().join(',');
  if (sorted === 'api_key,api_secret') return 'LiveKit Inference';
  if (sorted === 'api_key') return 'Provider API key';
  return 'Other';
}

function drawValues(keys, replacing) {
  const box = document.getElementById('cred-values');
  box.replaceChildren(...keys.map((key) => {
    const id = `cred-value-${key}`;
    const input = el('input', {
      id, type: 'password', autocomplete: 'new-password', spellcheck: 'false',
      placeholder: replacing ? 'unchanged (********)' : '', required: !replacing,
      'aria-describedby': `err-${id}`, dataset: { key },
    });
    return el('div', { class: 'field' }, el('label', { for: id, text: key }), input,
      el('p', { class: 'error', id: `err-${id}` }));
  }));
}

function openForm(credential) {
  editing = credential ? credential.name : null;
  form.hidden = false;
  document.getElementById('credential-form-title').textContent = editing ? `Replace values of ${editing}` : 'Add a credential';
  nameInput.value = editing || '';
  nameInput.disabled = Boolean(editing);
  if (credential) {
    const known = Object.entries(KINDS).find(([, keys]) => keys.join(',') === [...credential.keys].sort().join(','));
    kindSelect.value = known ? known[0] : 'api_key';
    kindSelect.disabled = true;
    drawValues(credential.keys, true);
  } else {
    kindSelect.disabled = false;
    drawValues(KINDS[kindSelect.value], false);
  }
  showErrors([], () => null);
  (editing ? form.querySelector('#cred-values input') : nameInput).focus();
}

async function load() {
  const answer = await api('GET', '/api/credentials');
  if (answer.status !== 200) {
    setStatus(`Cannot load the credentials: ${reason(answer)}`);
    return;
  }
  etag = answer.etag;
  const rows = answer.data.credentials.map((c) => {
    const actions = el('td', { class: 'row-actions' });
    if (canWrite()) {
      const replace = el('button', { type: 'button', text: 'Replace values', 'aria-label': `Replace values of ${c.name}` });
      replace.addEventListener('click', () => openForm(c));
      const remove = el('button', { type: 'button', text: 'Delete', 'aria-label': `Delete ${c.name}` });
      remove.addEventListener('click', () => removeCredential(c.name));
      actions.append(replace, ' ', remove);
    }
    return el('tr', { dataset: { credential: c.name } },
      el('td', { text: c.name }),
      el('td', { text: kindOf(c.keys) }),
      el('td', { class: 'masked', text: c.keys.map((k) => `${k}: ********`).join(', ') }),
      el('td', { text: c.used_by.length ? c.used_by.join(', ') : 'no model' }),
      actions);
  });
  document.querySelector('#credentials tbody').replaceChildren(...rows);
  document.getElementById('credentials').hidden = rows.length === 0;
  setStatus(rows.length ? `${rows.length} credential(s).` : 'No credentials yet.');
}

function fieldOf(loc) {
  const prefix = `credentials.${nameInput.value.trim()}`;
  if (loc === prefix || loc === 'name') return 'err-cred-name';
  if (loc.startsWith(`${prefix}.`)) {
    const id = `err-cred-value-${loc.slice(prefix.length + 1)}`;
    return document.getElementById(id) ? id : 'err-cred-form';
  }
  return 'err-cred-form';
}

async function save(event) {
  event.preventDefault();
  const name = nameInput.value.trim();
  if (!name) { showErrors([{ loc: 'name', msg: 'a name is required' }], fieldOf); return; }
  const body = {};
  const missing = [];
  form.querySelectorAll('#cred-values input').forEach((input) => {
    if (input.value) body[input.dataset.key] = input.value;
    else if (!editing) missing.push({ loc: `credentials.${name}.${input.dataset.key}`, msg: 'a value is required' });
  });
  if (missing.length) { showErrors(missing, fieldOf); return; }
  const answer = await api('PUT', `/api/credentials/${encodeURIComponent(name)}`, body, etag);
  form.querySelectorAll('#cred-values input').forEach((input) => { input.value = ''; });
  if (answer.status === 200) {
    form.hidden = true;
    await load();
    setStatus(`Saved ${name}.`);
  } else if (answer.status === 422) {
    showErrors(answer.data.errors, fieldOf);
    setStatus('Not saved: see the errors in the form.');
  } else if (answer.status === 409) {
    setStatus('Not saved: the configuration file changed since this page loaded it. Reload the page and try again.');
  } else {
    setStatus(`Not saved: ${reason(answer)}`);
  }
}

async function removeCredential(name) {
  if (!window.confirm(`Delete the credential ${name}?`)) return;
  const answer = await api('DELETE', `/api/credentials/${encodeURIComponent(name)}`, undefined, etag);
  if (answer.status === 200) { await load(); setStatus(`Deleted ${name}.`); return; }
  const why = answer.status === 422 ? answer.data.errors.map((e) => `${e.loc}: ${e.msg}`).join('; ') : reason(answer);
  setStatus(`Not deleted: ${why}`);
}

const add = document.getElementById('add-credential');
add.hidden = !canWrite();
add.addEventListener('click', () => openForm(null));
kindSelect.addEventListener('change', () => drawValues(KINDS[kindSelect.value], false));
document.getElementById('cred-cancel').addEventListener('click', () => { form.hidden = true; });
form.addEventListener('submit', save);
load().then(() => { document.body.dataset.ready = '1'; });
