// Small DOM helpers the dashboard's modules share (no framework: the page stays build-free).

export const $ = (id) => document.getElementById(id);

/** `el('li', {class: 'x', text: 'hi', 'data-id': 1}, child, ...)`: text is never parsed as HTML. */
export function el(tag, props = {}, ...children) {
  const node = tag === 'svg' || tag === 'path'
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

/** `1.5 s`, `2 min 3 s`, `1 h 2 min`: how long something took or has been running. */
export function formatDuration(ms) {
  if (!(ms > 0)) ms = 0;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
  return `${Math.floor(ms / 3600000)} h ${Math.floor((ms % 3600000) / 60000)} min`;
}

/** Whether the page is being looked at: polls pause while it is hidden. */
export function visible() {
  return document.visibilityState !== 'hidden';
}
