// Settings > Audit log: GET /api/audit (oldest first), shown newest first. Text only.
import { api, el, reason, setStatus } from '/dashboard/console/console.js';

const LIMIT = 500;

async function load() {
  const answer = await api('GET', `/api/audit?limit=${LIMIT}`);
  if (answer.status !== 200) {
    setStatus(`Cannot load the audit log: ${reason(answer)}`);
    return;
  }
  const records = [...answer.data.records].reverse();
  const rows = records.map((r) => el('tr', {},
    el('td', {}, el('time', { datetime: r.at, text: String(r.at).replace('T', ' ').replace('+00:00', '') })),
    el('td', { text: `${r.user} (${r.role})` }),
    el('td', { text: `${r.kind} ${r.name}` }),
    el('td', { text: r.action }),
    el('td', {}, el('pre', { class: 'diff', text: r.diff || '(no change)' }))));
  document.querySelector('#audit tbody').replaceChildren(...rows);
  document.getElementById('audit').hidden = rows.length === 0;
  const more = records.length === LIMIT ? ` (the last ${LIMIT})` : '';
  setStatus(rows.length ? `${rows.length} save(s)${more}, newest first.` : 'No saves yet.');
}

document.getElementById('refresh-audit').addEventListener('click', () => load());
load().then(() => { document.body.dataset.ready = '1'; });
