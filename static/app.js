// The live dashboard: traffic charts, a live table of jobs with their details, a chat room with
// who is online. All live traffic goes through gateway.js; plain fetch() for the job API, the
// presence list and the metrics.
import {connect} from '/static/gateway.js';
import {$} from '/static/dom.js';
import {startChat} from '/static/chat.js';
import {startJobs} from '/static/jobs.js';
import {startTraffic} from '/static/traffic.js';

const params = new URLSearchParams(location.search);
const gw = connect({transport: params.get('transport') || 'auto'});
window.gateway = gw; // for the console (and the browser tests)
window.dashboard = {states: [gw.state], jobs: new Map()};

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

startTraffic();
startJobs(gw);
startChat(gw);
