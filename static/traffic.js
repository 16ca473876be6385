// The traffic panel: events published per second, event frames delivered per second and open
// connections over the last minutes, from the gateway's own Prometheus metrics (/metrics), drawn
// as SVG sparklines. No external service: the page polls the process it is talking to and keeps
// the samples itself (so the chart starts when the page opens).

import {$, visible} from '/static/dom.js';

export const WINDOW_MS = 5 * 60 * 1000;
const MIN_SPAN_MS = 60 * 1000;
const POLL_MS = 1000;
const WIDTH = 300;
const HEIGHT = 64;

/** Each series: how to read it from the metrics, and whether it is a rate or a level. */
const SERIES = {
  events: {metric: 'gateway_events_published_total', rate: true, label: 'Events published per second'},
  deliveries: {metric: 'gateway_frames_delivered_total', rate: true, label: 'Deliveries per second'},
  connections: {metric: 'gateway_connections', rate: false, label: 'Open connections'},
};

/**
 * Sum every sample of each metric family in a Prometheus text exposition, by metric name
 * (labels dropped): `{gateway_connections: 3, ...}`.
 */
export function parseMetrics(text) {
  const totals = {};
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[2]);
    if (Number.isFinite(value)) totals[match[1]] = (totals[match[1]] || 0) + value;
  }
  return totals;
}

export function startTraffic() {
  const state = {samples: [], last: null, polls: 0, failures: 0, since: Date.now()};
  // One point per poll: {t, events, deliveries, connections}; rates need two scrapes.
  window.dashboard.traffic = state;

  async function poll() {
    if (!visible() || state.polling) return; // one scrape at a time, however slow
    state.polling = true;
    let totals;
    try {
      const response = await fetch('/metrics', {cache: 'no-store'});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      totals = parseMetrics(await response.text());
    } catch (err) {
      state.failures += 1;
      $('traffic-note').textContent = `metrics unavailable (${err.message}); retrying`;
      return;
    } finally {
      state.polling = false;
    }
    state.polls += 1;
    const now = Date.now();
    const point = {t: now};
    for (const [name, spec] of Object.entries(SERIES)) {
      const value = totals[spec.metric] || 0;
      if (!spec.rate) point[name] = value;
      else if (state.last && now > state.last.t && now - state.last.t < 5 * POLL_MS
        && value >= state.last.totals[name]) {
        point[name] = ((value - state.last.totals[name]) * 1000) / (now - state.last.t);
      } else point[name] = null; // first scrape, a long pause (hidden page), or a counter restart
    }
    state.last = {t: now, totals: Object.fromEntries(
      Object.entries(SERIES).map(([name, spec]) => [name, totals[spec.metric] || 0]),
    )};
    state.samples.push(point);
    while (state.samples.length && state.samples[0].t < now - WINDOW_MS) state.samples.shift();
    $('traffic-note').replaceChildren(
      `last ${Math.round(span(now) / 60000)} min · this gateway process · from `,
      Object.assign(document.createElement('a'), {href: '/metrics', textContent: '/metrics'}),
    );
    draw(now);
  }

  function draw(now) {
    for (const [name, spec] of Object.entries(SERIES)) {
      const figure = document.querySelector(`.metric[data-metric="${name}"]`);
      const points = state.samples.filter((p) => p[name] !== null && p[name] !== undefined);
      const current = points.length ? points[points.length - 1][name] : null;
      const max = Math.max(0, ...points.map((p) => p[name]));
      const top = niceCeiling(max);
      const shown = span(now);
      const x = (t) => (WIDTH * (t - (now - shown))) / shown;
      const y = (v) => HEIGHT - 2 - ((HEIGHT - 4) * v) / top;
      let line = '';
      points.forEach((p, i) => {
        line += `${i ? 'L' : 'M'}${x(p.t).toFixed(1)} ${y(p[name]).toFixed(1)}`;
      });
      const area = points.length
        ? `${line}L${x(points[points.length - 1].t).toFixed(1)} ${HEIGHT}L${x(points[0].t).toFixed(1)} ${HEIGHT}Z`
        : '';
      const svg = figure.querySelector('svg');
      svg.querySelector('.line').setAttribute('d', line);
      svg.querySelector('.area').setAttribute('d', area);
      svg.dataset.points = String(points.length);
      const text = current === null ? '–' : format(current, spec.rate);
      figure.querySelector('[data-value]').textContent = text;
      figure.dataset.current = current === null ? '' : String(current);
      figure.querySelector('[data-max]').textContent = points.length ? `peak ${format(max, spec.rate)}` : '';
      svg.setAttribute('aria-label', points.length
        ? `${spec.label} over the last ${Math.round(shown / 60000)} min: now ${text}, peak ${format(max, spec.rate)}`
        : `${spec.label}: no samples yet`);
    }
  }

  /** The chart's time span: from 1 minute (a page just opened) growing to the whole window. */
  function span(now) {
    return Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - state.since));
  }

  poll();
  setInterval(poll, POLL_MS);
  document.addEventListener('visibilitychange', () => { if (visible()) poll(); });
}

function format(value, rate) {
  if (!rate) return String(Math.round(value));
  if (value >= 100) return String(Math.round(value));
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(value === 0 ? 0 : 2);
}

/** 1, 2, 5, 10, 20, 50, ...: the y scale's top, so small changes do not rescale it every second. */
function niceCeiling(value) {
  if (!(value > 1)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}
