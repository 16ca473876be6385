// The live dashboard: submit jobs and watch them run, chat in a room. All live traffic goes
// through gateway.js; plain fetch() only for the job API.
import {connect, isTerminal} from '/static/gateway.js';

const params = new URLSearchParams(location.search);
const gw = connect({transport: params.get('transport') || 'auto'});
window.gateway = gw; // for the console (and the browser tests)
window.dashboard = {states: [gw.state], jobs: new Map()};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// --- connection indicator ------------------------------------------------------------------------

const STATE_LABELS = {connecting: 'connecting', open: 'live', reconnecting: 'reconnecting', closed: 'offline'};

function showConnection(state) {
  $('connection').dataset.state = state;
  $('connection').dataset.transport = gw.transport;
  $('connection-state').textContent = STATE_LABELS[state] || state;
  $('connection-transport').textContent = gw.transport === 'sse' ? 'SSE' : 'WebSocket';
}

gw.on('state', (state) => {
  const states = window.dashboard.states;
  if (states[states.length - 1] !== state) states.push(state);
  showConnection(state);
});
showConnection(gw.state);

// --- jobs --------------------------------------------------------------------------------------

const STATUS_BY_EVENT = {
  'job.queued': 'queued',
  'job.started': 'running',
  'job.progress': 'running',
  'job.retrying': 'retrying',
  'job.completed': 'completed',
  'job.failed': 'failed',
  'job.cancelled': 'cancelled',
};
let jobTypes = [];

async function loadJobTypes() {
  const select = $('job-type');
  try {
    const response = await fetch('/job-types');
    jobTypes = (await response.json()).job_types || [];
  } catch (err) {
    select.replaceChildren(el('option', {value: '', text: 'cannot load job types'}));
    return;
  }
  select.replaceChildren(...jobTypes.map((t) => el('option', {value: t.name, text: t.name})));
  const preferred = jobTypes.find((t) => t.name === 'sleep') || jobTypes[0];
  if (preferred) select.value = preferred.name;
  chooseType();
  document.body.dataset.ready = 'true';
}

function chooseType() {
  const spec = jobTypes.find((t) => t.name === $('job-type').value);
  // Descriptions mark parameter names as `code`.
  const parts = (spec && spec.description ? spec.description : '').split('`');
  $('job-type-help').replaceChildren(...parts.map((part, i) => (i % 2 ? el('code', {text: part}) : part)));
  $('job-data').value = spec && spec.example !== null && spec.example !== undefined
    ? JSON.stringify(spec.example, null, 2)
    : '{}';
  $('job-data-error').textContent = '';
}

async function submitJob(event) {
  event.preventDefault();
  const errorBox = $('job-data-error');
  let data;
  try {
    data = JSON.parse($('job-data').value || 'null');
  } catch (err) {
    errorBox.textContent = `Data is not valid JSON: ${err.message}`;
    $('job-data').setAttribute('aria-invalid', 'true');
    $('job-data').focus();
    return;
  }
  $('job-data').removeAttribute('aria-invalid');
  errorBox.textContent = '';
  const button = $('job-submit');
  button.disabled = true;
  try {
    const response = await fetch('/jobs', {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({type: $('job-type').value, data}),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status !== 202) {
      errorBox.textContent = body.detail || body.title || `The gateway said ${response.status}`;
      return;
    }
    addJob(body);
  } catch (err) {
    errorBox.textContent = `Cannot reach the gateway: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

function formatElapsed(ms) {
  if (ms < 0) ms = 0;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.floor((ms % 60000) / 1000)} s`;
}

function addJob(resource) {
  $('jobs-empty').hidden = true;
  const job = {
    id: resource.id,
    type: resource.type,
    channel: resource.channel || `job:${resource.id}`,
    status: resource.status || 'queued',
    started: Date.parse(resource.created_at) || Date.now(),
    ended: null,
    events: [],
  };
  const bar = el('div', {class: 'bar-fill'});
  const progress = el('div', {
    class: 'bar',
    role: 'progressbar',
    'aria-valuemin': '0',
    'aria-valuemax': '100',
    'aria-valuenow': '0',
    'aria-label': `Progress of job ${job.id}`,
  }, bar);
  const status = el('span', {class: 'status', 'data-status': job.status, text: job.status});
  const percent = el('span', {class: 'percent', text: '0%'});
  const elapsed = el('span', {class: 'elapsed', text: '0.0 s'});
  const message = el('p', {class: 'job-message'});
  const outcome = el('div', {class: 'outcome'});
  const log = el('ol', {class: 'event-log'});
  const details = el('details', {class: 'log'}, el('summary', {text: 'Event log'}), log);
  const cancel = el('button', {type: 'button', class: 'ghost small', text: 'Cancel'});
  const card = el(
    'li',
    {class: 'card job', 'data-job-id': job.id, 'data-status': job.status},
    el('div', {class: 'job-head'},
      el('span', {class: 'job-type', text: job.type}),
      el('code', {class: 'job-id', text: job.id}),
      status,
    ),
    el('div', {class: 'progress-row'}, progress, percent),
    el('div', {class: 'job-meta'}, elapsed, message, cancel),
    outcome,
    details,
  );
  $('job-list').prepend(card);
  window.dashboard.jobs.set(job.id, job);

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    await fetch(`/jobs/${job.id}/cancel`, {method: 'POST'}).catch(() => null);
  });

  const tick = setInterval(() => {
    elapsed.textContent = formatElapsed((job.ended || Date.now()) - job.started);
  }, 200);

  const setProgress = (fraction) => {
    const value = Math.max(0, Math.min(1, Number(fraction) || 0));
    bar.style.width = `${value * 100}%`;
    progress.setAttribute('aria-valuenow', String(Math.round(value * 100)));
    percent.textContent = `${Math.round(value * 100)}%`;
  };

  const unsubscribe = gw.subscribe(job.channel, (event) => {
    job.events.push(event);
    const data = event.data || {};
    const time = new Date(event.time || Date.now());
    log.append(el('li', {'data-event-id': event.id},
      el('time', {dateTime: event.time || '', text: time.toLocaleTimeString()}),
      el('span', {class: 'event-type', text: event.type}),
      el('span', {class: 'event-data', text: summarize(event)}),
    ));
    if (event.type === 'job.queued') job.started = Date.parse(event.time) || job.started;
    job.status = STATUS_BY_EVENT[event.type] || job.status;
    status.textContent = job.status;
    status.dataset.status = job.status;
    card.dataset.status = job.status;
    if (event.type === 'job.progress') {
      setProgress(data.progress);
      message.textContent = data.message || '';
    } else if (event.type === 'job.started') {
      message.textContent = data.attempt > 1 ? `attempt ${data.attempt}` : 'started';
    } else if (event.type === 'job.retrying') {
      message.textContent = `retrying: ${(data.error && data.error.message) || 'error'}`;
    }
    if (isTerminal(event)) {
      job.ended = Date.parse(event.time) || Date.now();
      elapsed.textContent = formatElapsed(job.ended - job.started);
      clearInterval(tick);
      cancel.remove();
      if (event.type === 'job.completed') {
        setProgress(1);
        message.textContent = 'done';
        const url = data.result_url || `/jobs/${job.id}/result`;
        outcome.replaceChildren(
          el('a', {class: 'result-link', href: url, target: '_blank', rel: 'noopener', text: 'Result'}),
          el('pre', {class: 'result', text: JSON.stringify(data.result, null, 2)}),
        );
      } else {
        const error = data.error || data.reason || event.type;
        outcome.replaceChildren(el('p', {
          class: 'job-error',
          role: 'alert',
          text: typeof error === 'string' ? error : error.message || JSON.stringify(error),
        }));
        message.textContent = job.status;
      }
      unsubscribe();
    }
  });
}

function summarize(event) {
  const data = event.data || {};
  if (event.type === 'job.progress') return `${Math.round((data.progress || 0) * 100)}% ${data.message || ''}`;
  if (event.type === 'job.completed') return 'result ready';
  if (data.error) return data.error.message || JSON.stringify(data.error);
  return JSON.stringify(data);
}

$('job-type').addEventListener('change', chooseType);
$('job-form').addEventListener('submit', submitJob);
$('job-data').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('job-form').requestSubmit();
});
loadJobTypes();

// --- chat ------------------------------------------------------------------------------------

let room = null;

function joinRoom(event) {
  event.preventDefault();
  const name = $('room-name').value.trim();
  const nick = $('nickname').value.trim();
  if (!$('join-form').reportValidity() || !name || !nick) return;
  leaveRoom();
  localStorage.setItem('gateway.nick', nick);
  const channel = `room:${name}`;
  const list = $('messages');
  list.replaceChildren();
  $('room-title').textContent = `#${name}`;
  $('room').hidden = false;
  $('chat-error').textContent = '';
  const unsubscribe = gw.subscribe(channel, (event) => {
    const data = event.data || {};
    const mine = data.nick === nick;
    const time = new Date(event.time || Date.now());
    list.append(el('li', {class: mine ? 'message mine' : 'message', 'data-event-id': event.id},
      el('span', {class: 'nick', text: data.nick || 'anonymous'}),
      el('time', {dateTime: event.time || '', text: time.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})}),
      el('p', {class: 'text', text: event.type === 'message' ? data.text ?? '' : `${event.type} ${JSON.stringify(data)}`}),
    ));
    list.scrollTop = list.scrollHeight;
  }, {onError: (err) => { $('chat-error').textContent = err.message; }});
  room = {channel, nick, unsubscribe};
  $('message-text').focus();
}

function leaveRoom() {
  if (!room) return;
  room.unsubscribe();
  room = null;
  $('room').hidden = true;
}

async function sendMessage(event) {
  event.preventDefault();
  const input = $('message-text');
  const text = input.value.trim();
  if (!room || !text) return;
  input.value = '';
  try {
    await gw.publish(room.channel, 'message', {nick: room.nick, text});
    $('chat-error').textContent = '';
  } catch (err) {
    input.value = input.value || text;
    $('chat-error').textContent = `Not sent: ${err.message}`;
  }
}

$('nickname').value = localStorage.getItem('gateway.nick') || '';
$('join-form').addEventListener('submit', joinRoom);
$('leave-button').addEventListener('click', () => {
  leaveRoom();
  $('room-name').focus();
});
$('message-form').addEventListener('submit', sendMessage);
