// Settings > Users: GET /api/users, PUT /api/users/{name}, POST /api/users/{name}/password,
// DELETE /api/users/{name} (admins only; docs/console.md). Passwords go to the server once,
// in the request that sets them, and are cleared from the form right after.
import { api, canWrite, el, reason, setStatus, showErrors } from '/dashboard/console/console.js';

const minLength = Number(document.body.dataset.minLength || '8');
const userForm = document.getElementById('user-form');
const passwordForm = document.getElementById('password-form');
const conflict = document.getElementById('conflict');
let etag = null;
let roles = [];
let resetting = null; // the user whose password the password form sets

const path = (name) => `/api/users/${encodeURIComponent(name)}`;

function roleSelect(id, value, label) {
  const select = el('select', { id, 'aria-label': label, 'aria-describedby': `err-${id}` });
  for (const role of roles) select.append(el('option', { value: role, text: role }));
  if (value !== undefined) select.value = value;
  return select;
}

async function load() {
  const answer = await api('GET', '/api/users');
  if (answer.status !== 200) {
    setStatus(`Cannot load the users: ${reason(answer)}`);
    return;
  }
  etag = answer.etag;
  roles = answer.data.roles;
  conflict.hidden = true;
  const rows = answer.data.users.map((user, i) => {
    const select = roleSelect(`role-${i}`, user.role, `Role of ${user.name}`);
    select.disabled = !canWrite();
    const roleCell = el('td', { class: 'field' }, select, el('p', { class: 'error', id: `err-role-${i}` }));
    const actions = el('td', { class: 'row-actions' });
    if (canWrite()) {
      const save = el('button', { type: 'button', text: 'Save role', 'aria-label': `Save the role of ${user.name}` });
      save.addEventListener('click', () => changeRole(user.name, select.value, `err-role-${i}`));
      const reset = el('button', { type: 'button', text: 'Reset password', 'aria-label': `Reset the password of ${user.name}` });
      reset.addEventListener('click', () => openReset(user.name));
      const remove = el('button', { type: 'button', text: 'Delete', 'aria-label': `Delete ${user.name}` });
      remove.addEventListener('click', () => removeUser(user.name, `err-role-${i}`));
      actions.append(save, ' ', reset, ' ', remove);
    }
    return el('tr', { dataset: { user: user.name } }, el('th', { scope: 'row', text: user.name }), roleCell, actions);
  });
  document.querySelector('#users tbody').replaceChildren(...rows);
  document.getElementById('users').hidden = rows.length === 0;
  const role = document.getElementById('user-role');
  role.replaceChildren(...roles.map((r) => el('option', { value: r, text: r })));
  role.value = roles.includes('viewer') ? 'viewer' : roles[roles.length - 1];
  setStatus(rows.length ? `${rows.length} user(s).` : 'No users yet.');
}

// The answer of a save: true when saved; 422 beside the fields, 409 offers to reload.
function handle(answer, fieldOf, done) {
  if (answer.status === 200) {
    etag = answer.etag;
    setStatus(done);
    return true;
  }
  if (answer.status === 422) {
    showErrors(answer.data.errors, fieldOf);
    setStatus('Not saved: see the errors beside the fields.');
  } else if (answer.status === 409) {
    conflict.hidden = false;
    setStatus('Not saved: the configuration file changed since this page loaded it.');
    document.getElementById('reload-users').focus();
  } else {
    setStatus(`Not saved: ${reason(answer)}`);
  }
  return false;
}

async function changeRole(name, role, errorId) {
  showErrors([], () => null);
  const answer = await api('PUT', path(name), { role }, etag);
  if (handle(answer, () => errorId, `Saved: ${name} is now ${role}.`)) await load();
}

async function removeUser(name, errorId) {
  if (!window.confirm(`Delete the user ${name}?`)) return;
  showErrors([], () => null);
  const answer = await api('DELETE', path(name), undefined, etag);
  if (handle(answer, () => errorId, `Deleted ${name}.`)) await load();
}

// Client-side checks of a password and its confirmation (the server checks the length too).
function passwordProblems(password, confirm, passwordLoc, confirmLoc) {
  const problems = [];
  if (password.length < minLength) problems.push({ loc: passwordLoc, msg: `must have at least ${minLength} characters` });
  if (password !== confirm) problems.push({ loc: confirmLoc, msg: 'the two passwords differ' });
  return problems;
}

function openAdd() {
  passwordForm.hidden = true;
  userForm.hidden = false;
  userForm.reset();
  const role = document.getElementById('user-role');
  role.value = roles.includes('viewer') ? 'viewer' : roles[roles.length - 1];
  showErrors([], () => null);
  document.getElementById('user-name').focus();
}

function addFieldOf(loc) {
  if (loc === 'name' || /^users\[\d+\]\.name$/.test(loc) || /^users\[\d+\]$/.test(loc)) return 'err-user-name';
  if (loc.endsWith('.role')) return 'err-user-role';
  if (loc.endsWith('.password') || loc === 'password') return 'err-user-password';
  if (loc === 'confirm') return 'err-user-confirm';
  return null;
}

async function addUser(event) {
  event.preventDefault();
  const name = document.getElementById('user-name').value.trim();
  const role = document.getElementById('user-role').value;
  const password = document.getElementById('user-password');
  const confirm = document.getElementById('user-confirm');
  const problems = passwordProblems(password.value, confirm.value, 'password', 'confirm');
  if (!name) problems.unshift({ loc: 'name', msg: 'a name is required' });
  if (name && document.querySelector(`#users tr[data-user="${CSS.escape(name)}"]`)) {
    problems.unshift({ loc: 'name', msg: 'there is a user of that name already' });
  }
  if (problems.length) { showErrors(problems, addFieldOf); return; }
  const answer = await api('PUT', path(name), { role, password: password.value }, etag);
  password.value = '';
  confirm.value = '';
  if (handle(answer, addFieldOf, `Added ${name} (${role}).`)) {
    userForm.hidden = true;
    await load();
    setStatus(`Added ${name} (${role}).`);
  }
}

function openReset(name) {
  resetting = name;
  userForm.hidden = true;
  passwordForm.hidden = false;
  passwordForm.reset();
  document.getElementById('password-form-title').textContent = `Reset the password of ${name}`;
  showErrors([], () => null);
  document.getElementById('new-password').focus();
}

function resetFieldOf(loc) {
  if (loc.endsWith('password')) return 'err-new-password';
  if (loc === 'confirm') return 'err-new-confirm';
  return null;
}

async function resetPassword(event) {
  event.preventDefault();
  const password = document.getElementById('new-password');
  const confirm = document.getElementById('new-confirm');
  const problems = passwordProblems(password.value, confirm.value, 'password', 'confirm');
  if (problems.length) { showErrors(problems, resetFieldOf); return; }
  const answer = await api('POST', `${path(resetting)}/password`, { password: password.value }, etag);
  password.value = '';
  confirm.value = '';
  if (handle(answer, resetFieldOf, `Set a new password for ${resetting}.`)) {
    passwordForm.hidden = true;
  }
}

const add = document.getElementById('add-user');
add.hidden = !canWrite();
add.addEventListener('click', openAdd);
userForm.addEventListener('submit', addUser);
passwordForm.addEventListener('submit', resetPassword);
document.getElementById('user-cancel').addEventListener('click', () => { userForm.hidden = true; });
document.getElementById('password-cancel').addEventListener('click', () => { passwordForm.hidden = true; });
document.getElementById('reload-users').addEventListener('click', () => load());
load().then(() => { document.body.dataset.ready = '1'; });
