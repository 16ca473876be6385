// The jobs panel: a live table of recent jobs (status filters, progress, duration), the job
// detail view (event log, result or error, cancel), and the form that submits a job.
//
// Where rows come from: the jobs this page submits, and, where the gateway lets this page list
// jobs (`GET /jobs`: open in dev mode, an API key otherwise), every recent job, polled while the
// page is visible. Every job that has not ended is followed on its `job:<id>` channel through
// gateway.js, so its row moves with each event as it arrives; a job that ended is not followed.

import {isTerminal} from '/static/gateway.js';
import {$, el, formatDuration, visible} from '/static/dom.js';

const STATUS_BY_EVENT = {
  'job.queued': 'queued',
  'job.started': 'running',
  'job.progress': 'running',
  'job.retrying': 'retrying',
  'job.completed': 'completed',
  'job.failed': 'failed',
  'job.cancelled': 'cancelled',
};
const ACTIVE = new Set(['queued', 'running', 'retrying']);
const ENDED = new Set(['completed', 'failed', 'cancelled']);
const LIST_POLL_MS = 2000;
const LIST_LIMIT = 50;
const MAX_ROWS = 100; // ended jobs past this many rows are dropped, oldest first
const MAX_FOLLOWED = 50; // job channels followed at once (GATEWAY_MAX_SUBSCRIPTIONS is 100)

export function startJobs(gw) {
  const jobs = window.dashboard.jobs; // id -> job
  const view = {filter: 'all', selected: null, listing: 'unknown', shownEvents: 0};
  window.dashboard.jobView = view;

  // --- the table --------------------------------------------------------------------------

  function upsert(resource, token) {
    let job = jobs.get(resource.id);
    if (!job) {
      job = {
        id: resource.id,
        type: resource.type,
        channel: resource.channel || `job:${resource.id}`,
        status: resource.status || 'queued',
        progress: Number(resource.progress) || 0,
        message: resource.message || '',
        created: Date.parse(resource.created_at) || Date.now(),
        ended: null,
        token,
        error: resource.error || null,
        result: undefined,
        resultUrl: resource.result_url || null,
        events: [],
        unsubscribe: null,
      };
      job.row = buildRow(job);
      jobs.set(job.id, job);
      fromResource(job, resource);
      insertRow(job);
    } else if (!job.unsubscribe && !ENDED.has(job.status)) {
      // Not followed (yet): the resource is the freshest we know.
      fromResource(job, resource);
    }
    if (!ENDED.has(job.status)) follow(job);
    render(job);
    return job;
  }

  function fromResource(job, resource) {
    job.status = resource.status || job.status;
    job.progress = Number(resource.progress) || job.progress;
    job.message = resource.message || job.message;
    if (ENDED.has(job.status)) {
      job.ended = Date.parse(resource.updated_at) || job.created;
      job.error = resource.error || null;
      job.resultUrl = resource.result_url || null;
      if (job.status === 'completed') job.progress = 1;
    }
  }

  function buildRow(job) {
    const open = el('button', {type: 'button', class: 'job-open', title: job.id,
      'aria-controls': 'job-detail', 'aria-expanded': 'false'},
    el('span', {class: 'job-type', text: job.type}), ' ',
    el('code', {class: 'job-id', text: job.id.slice(0, 8)}));
    open.addEventListener('click', (event) => {
      event.stopPropagation();
      select(view.selected === job ? null : job);
    });
    const status = el('span', {class: 'status'});
    const fill = el('div', {class: 'bar-fill'});
    const bar = el('div', {class: 'bar', role: 'progressbar', 'aria-valuemin': '0',
      'aria-valuemax': '100', 'aria-valuenow': '0', 'aria-label': `Progress of job ${job.id}`}, fill);
    const percent = el('span', {class: 'percent', text: '0%'});
    const duration = el('span', {class: 'duration'});
    const tr = el('tr', {class: 'job-row', 'data-job-id': job.id},
      el('td', {class: 'cell-job'}, open),
      el('td', {class: 'cell-status'}, status),
      el('td', {class: 'cell-progress'}, el('div', {class: 'progress-row'}, bar, percent)),
      el('td', {class: 'cell-duration'}, duration),
    );
    tr.addEventListener('click', () => select(view.selected === job ? null : job));
    return {tr, open, status, bar, fill, percent, duration};
  }

  function insertRow(job) {
    const body = $('job-rows');
    const after = [...jobs.values()]
      .filter((other) => other !== job && other.row.tr.isConnected && other.created < job.created)
      .sort((a, b) => b.created - a.created)[0];
    if (after) body.insertBefore(job.row.tr, after.row.tr);
    else body.append(job.row.tr);
    trim();
  }

  function trim() {
    if (jobs.size <= MAX_ROWS) return;
    const oldest = [...jobs.values()]
      .filter((job) => ENDED.has(job.status) && job !== view.selected && !job.unsubscribe)
      .sort((a, b) => a.created - b.created);
    for (const job of oldest.slice(0, jobs.size - MAX_ROWS)) {
      job.row.tr.remove();
      jobs.delete(job.id);
    }
  }

  function matches(job) {
    if (view.filter === 'all') return true;
    if (view.filter === 'active') return ACTIVE.has(job.status);
    return job.status === view.filter;
  }

  function render(job) {
    const {tr, status, bar, fill, percent} = job.row;
    tr.dataset.status = job.status;
    status.dataset.status = job.status;
    status.textContent = job.status;
    const value = Math.round(Math.max(0, Math.min(1, job.progress)) * 100);
    bar.setAttribute('aria-valuenow', String(value));
    fill.style.width = `${value}%`;
    percent.textContent = `${value}%`;
    tr.hidden = !matches(job);
    renderDuration(job);
    if (view.selected === job) renderDetail(job);
    renderCounts();
  }

  function renderDuration(job) {
    job.row.duration.textContent = formatDuration((job.ended || Date.now()) - job.created);
    if (view.selected === job) {
      const verb = job.ended ? 'took' : 'running for';
      $('job-detail').querySelector('.elapsed').textContent = `${verb} ${formatDuration((job.ended || Date.now()) - job.created)}`;
    }
  }

  function renderCounts() {
    const counts = {all: 0, active: 0, completed: 0, failed: 0, cancelled: 0};
    let shown = 0;
    for (const job of jobs.values()) {
      counts.all += 1;
      if (ACTIVE.has(job.status)) counts.active += 1;
      else if (job.status in counts) counts[job.status] += 1;
      if (matches(job)) shown += 1;
    }
    for (const [name, count] of Object.entries(counts)) {
      const node = document.querySelector(`[data-count="${name}"]`);
      if (node.textContent !== String(count)) node.textContent = String(count);
    }
    $('jobs-empty').hidden = counts.all > 0;
    $('jobs-filtered-empty').hidden = counts.all === 0 || shown > 0;
    const summary = counts.all === 0
      ? 'no jobs yet'
      : `${counts.all} ${counts.all === 1 ? 'job' : 'jobs'} · ${counts.active} active`;
    if ($('jobs-summary').textContent !== summary) $('jobs-summary').textContent = summary;
  }

  function setFilter(value) {
    view.filter = value;
    for (const job of jobs.values()) job.row.tr.hidden = !matches(job);
    renderCounts();
  }

  // --- following a job's channel ----------------------------------------------------------

  function follow(job) {
    if (job.unsubscribe) return;
    // Past the limit a running job is not followed: the list poll keeps its row current, and
    // it is followed as soon as a place is free (the next poll).
    if ([...jobs.values()].filter((other) => other.unsubscribe).length >= MAX_FOLLOWED) return;
    job.events = [];
    if (view.selected === job) resetLog();
    job.unsubscribe = gw.subscribe(job.channel, (event) => {
      apply(job, event);
      if (isTerminal(event)) release(job);
    }, {
      token: job.token,
      onError: (err) => {
        job.message = `cannot follow: ${err.message}`;
        release(job);
        render(job);
      },
    });
  }

  function release(job) {
    if (!job.unsubscribe) return;
    const unsubscribe = job.unsubscribe;
    job.unsubscribe = null;
    unsubscribe();
  }

  function apply(job, event) {
    job.events.push(event);
    const data = event.data || {};
    if (event.type === 'job.queued') job.created = Date.parse(event.time) || job.created;
    job.status = STATUS_BY_EVENT[event.type] || job.status;
    if (event.type === 'job.progress') {
      job.progress = Number(data.progress) || 0;
      job.message = data.message || '';
    } else if (event.type === 'job.started') {
      job.message = data.attempt > 1 ? `attempt ${data.attempt}` : 'started';
    } else if (event.type === 'job.retrying') {
      job.message = `retrying: ${(data.error && data.error.message) || 'error'}`;
    }
    if (isTerminal(event)) {
      job.ended = Date.parse(event.time) || Date.now();
      if (event.type === 'job.completed') {
        job.progress = 1;
        job.message = 'done';
        job.result = data.result;
        job.resultUrl = data.result_url || `/jobs/${job.id}/result`;
      } else {
        job.error = data.error || data.reason || event.type;
        job.message = job.status;
      }
    }
    render(job);
  }

  // --- the detail view --------------------------------------------------------------------

  function select(job) {
    const previous = view.selected;
    if (previous) {
      previous.row.tr.classList.remove('selected');
      previous.row.open.setAttribute('aria-expanded', 'false');
    }
    view.selected = job;
    const detail = $('job-detail');
    if (!job) {
      detail.hidden = true;
      if (previous && previous.unsubscribe && ENDED.has(previous.status)) release(previous);
      if (previous && previous.row.tr.isConnected) previous.row.open.focus();
      return;
    }
    job.row.tr.classList.add('selected');
    job.row.open.setAttribute('aria-expanded', 'true');
    detail.hidden = false;
    resetLog();
    // A job that ended before this page saw it: its history tells the whole story.
    if (!job.events.some(isTerminal) && !job.unsubscribe) follow(job);
    renderDetail(job);
  }

  function resetLog() {
    view.shownEvents = 0;
    $('job-detail').querySelector('.event-log').replaceChildren();
  }

  function renderDetail(job) {
    const detail = $('job-detail');
    detail.dataset.jobId = job.id;
    detail.dataset.status = job.status;
    detail.querySelector('.job-type').textContent = job.type;
    detail.querySelector('.job-id').textContent = job.id;
    const status = detail.querySelector('.status');
    status.textContent = job.status;
    status.dataset.status = job.status;
    const value = Math.round(Math.max(0, Math.min(1, job.progress)) * 100);
    const bar = detail.querySelector('[role=progressbar]');
    bar.setAttribute('aria-valuenow', String(value));
    bar.setAttribute('aria-label', `Progress of job ${job.id}`);
    detail.querySelector('.bar-fill').style.width = `${value}%`;
    detail.querySelector('.percent').textContent = `${value}%`;
    detail.querySelector('.job-message').textContent = job.message;
    $('job-cancel').hidden = ENDED.has(job.status);
    renderDuration(job);
    renderOutcome(job, detail.querySelector('.outcome'));
    const log = detail.querySelector('.event-log');
    for (const event of job.events.slice(view.shownEvents)) {
      const time = new Date(event.time || Date.now());
      log.append(el('li', {'data-event-id': event.id},
        el('time', {dateTime: event.time || '', text: time.toLocaleTimeString()}),
        el('span', {class: 'event-type', text: event.type}),
        el('span', {class: 'event-data', text: summarize(event)}),
      ));
    }
    view.shownEvents = job.events.length;
  }

  function renderOutcome(job, outcome) {
    const key = `${job.id}:${job.status}:${job.result !== undefined}`;
    if (outcome.dataset.key === key) return;
    outcome.dataset.key = key;
    if (job.status === 'completed') {
      const url = job.resultUrl || `/jobs/${job.id}/result`;
      outcome.replaceChildren(
        el('a', {class: 'result-link', href: url, target: '_blank', rel: 'noopener', text: 'Result'}),
        job.result !== undefined ? el('pre', {class: 'result', text: JSON.stringify(job.result, null, 2)}) : null,
      );
    } else if (ENDED.has(job.status) && job.error) {
      const error = job.error;
      outcome.replaceChildren(el('p', {
        class: 'job-error',
        text: typeof error === 'string' ? error : error.message || JSON.stringify(error),
      }));
    } else outcome.replaceChildren();
  }

  $('job-detail-close').addEventListener('click', () => select(null));
  $('job-detail').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') select(null);
  });
  $('job-cancel').addEventListener('click', async () => {
    const job = view.selected;
    if (!job) return;
    const button = $('job-cancel');
    button.disabled = true;
    try {
      const response = await fetch(`/jobs/${job.id}/cancel`, {method: 'POST'});
      if (!response.ok && response.status !== 409) {
        const body = await response.json().catch(() => ({}));
        job.message = `not cancelled: ${body.detail || body.title || response.status}`;
        render(job);
      }
    } catch (err) {
      job.message = `not cancelled: ${err.message}`;
      render(job);
    } finally {
      button.disabled = false;
    }
  });
  for (const radio of document.querySelectorAll('input[name="job-filter"]')) {
    radio.addEventListener('change', () => { if (radio.checked) setFilter(radio.value); });
  }

  // --- the list of every recent job -------------------------------------------------------

  async function pollList() {
    if (view.listing === 'refused' || view.polling || !visible()) return;
    view.polling = true;
    let response;
    try {
      response = await fetch(`/jobs?limit=${LIST_LIMIT}`, {cache: 'no-store'});
    } catch (err) {
      return; // the connection indicator already says the gateway is unreachable
    } finally {
      view.polling = false;
    }
    if (response.status === 401 || response.status === 403) {
      view.listing = 'refused';
      const note = $('jobs-note');
      note.textContent = 'Showing the jobs submitted from this page: listing every job needs an API key on this gateway.';
      note.hidden = false;
      return;
    }
    if (!response.ok) return;
    const body = await response.json().catch(() => ({}));
    view.listing = 'listed';
    for (const resource of (body.jobs || []).slice().reverse()) upsert(resource);
  }

  setInterval(() => {
    for (const job of jobs.values()) if (!job.ended) renderDuration(job);
  }, 500);
  pollList();
  setInterval(pollList, LIST_POLL_MS);
  document.addEventListener('visibilitychange', () => { if (visible()) pollList(); });

  // --- submitting -------------------------------------------------------------------------

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
      select(upsert(body, body.token));
    } catch (err) {
      errorBox.textContent = `Cannot reach the gateway: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  $('job-type').addEventListener('change', chooseType);
  $('job-form').addEventListener('submit', submitJob);
  $('job-data').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('job-form').requestSubmit();
  });
  loadJobTypes();
  renderCounts();
}

function summarize(event) {
  const data = event.data || {};
  if (event.type === 'job.progress') return `${Math.round((data.progress || 0) * 100)}% ${data.message || ''}`;
  if (event.type === 'job.completed') return 'result ready';
  if (data.error) return data.error.message || JSON.stringify(data.error);
  const {job_id: _, ...rest} = data;
  return Object.keys(rest).length ? JSON.stringify(rest) : '';
}
