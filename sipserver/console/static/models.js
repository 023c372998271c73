// The list of realtime voice models (GET /api/models).
import { api, canWrite, el, reason, setStatus } from './console.js';

const TYPES = { custom: 'Custom', livekit_inference: 'LiveKit Inference' };

async function load() {
  const answer = await api('GET', '/api/models');
  if (answer.status !== 200) {
    setStatus(`Cannot load the models: ${reason(answer)}`);
    return;
  }
  const rows = answer.data.models.map((m) => el('tr', { dataset: { model: m.name } },
    el('td', {}, el('a', { href: `/dashboard/models/${encodeURIComponent(m.name)}`, text: m.name })),
    el('td', { text: TYPES[m.type] || String(m.type) }),
    el('td', { text: m.credential || '—' }),
    el('td', { text: m.used_by.length ? m.used_by.join(', ') : 'no agent' }),
  ));
  document.querySelector('#models tbody').replaceChildren(...rows);
  document.getElementById('models').hidden = rows.length === 0;
  setStatus(rows.length ? `${rows.length} model(s).` : 'No models yet.');
}

document.getElementById('new-model').hidden = !canWrite();
load();
