// Shared helpers of the console pages: the JSON API (docs/console.md) and error display.

export const canWrite = () => document.body.dataset.canWrite === 'true';

// One API call. Answers {status, data, etag}; data is the parsed JSON (or null).
export async function api(method, path, body, etag) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (etag) headers['If-Match'] = etag;
  const resp = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    location.href = '/dashboard/login?next=' + encodeURIComponent(location.pathname);
  }
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  return { status: resp.status, data, etag: resp.headers.get('ETag') };
}

// A text node-only element (no HTML from data).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The page's status line (#status, a live region) and its copy beside the Save button.
export function setStatus(text) {
  for (const id of ['status', 'save-status']) {
    const status = document.getElementById(id);
    if (status) status.textContent = text;
  }
}

// The message of an error answer.
export function reason(answer) {
  if (answer.data && answer.data.error) return answer.data.error;
  return `the server answered ${answer.status}`;
}

// Shows each 422 error beside the field it names: `fieldOf(loc)` gives the id of the
// element (a <p class="error">) or null; the rest go to the list #general-errors.
export function showErrors(errors, fieldOf) {
  document.querySelectorAll('.error[data-filled]').forEach((p) => {
    p.textContent = '';
    delete p.dataset.filled;
    const input = p.closest('.field')?.querySelector('input, select');
    input?.removeAttribute('aria-invalid');
  });
  const general = document.getElementById('general-errors');
  if (general) general.replaceChildren();
  let first = null;
  for (const { loc, msg } of errors) {
    const id = fieldOf(loc);
    const target = id && document.getElementById(id);
    if (target) {
      target.textContent = target.dataset.filled ? `${target.textContent}; ${msg}` : msg;
      target.dataset.filled = '1';
      const input = target.closest('.field')?.querySelector('input, select');
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        first = first || input;
      }
    } else if (general) {
      general.append(el('li', { text: loc ? `${loc}: ${msg}` : msg }));
    }
  }
  if (first) first.focus();
}
