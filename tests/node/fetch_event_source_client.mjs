// @microsoft/fetch-event-source used as its README shows, on a gateway stream:
//   node fetch_event_source_client.mjs basic|advanced URL
// basic: `await fetchEventSource(url, {onmessage(ev) {...}})`; it resolves when the stream ends.
// advanced: the README's error handling (strict content-type check in onopen, retry when the
// server closes, FatalError stops); the caller aborts after the job's terminal event.
// Every message's data is parsed as JSON. Prints {messages, fetches, errors} as JSON on stdout;
// gives up after 20 s (a reconnect loop never resolves).
import {counters} from './browser_globals.mjs';
import {EventStreamContentType, fetchEventSource} from '@microsoft/fetch-event-source';

const [mode, url] = process.argv.slice(2);
const TERMINAL = new Set(['job.completed', 'job.failed', 'job.cancelled']);
const result = {messages: [], fetches: 0, errors: []};
const report = (timedOut) => {
  result.fetches = counters.fetches;
  result.timedOut = timedOut;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
};
setTimeout(() => report(true), 20000);

class RetriableError extends Error {}
class FatalError extends Error {}

if (mode === 'basic') {
  await fetchEventSource(url, {
    openWhenHidden: true, // no document visibility outside a browser
    onmessage(ev) {
      result.messages.push(JSON.parse(ev.data));
    },
    onerror(err) {
      result.errors.push(String(err));
    },
  });
} else {
  const ctrl = new AbortController();
  await fetchEventSource(url, {
    openWhenHidden: true,
    signal: ctrl.signal,
    async onopen(response) {
      if (response.ok && response.headers.get('content-type') === EventStreamContentType) {
        return; // everything's good
      } else if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new FatalError();
      } else {
        throw new RetriableError();
      }
    },
    onmessage(msg) {
      if (msg.event === 'FatalError') {
        throw new FatalError(msg.data);
      }
      const data = JSON.parse(msg.data);
      result.messages.push(data);
      if (TERMINAL.has(data.type)) ctrl.abort();
    },
    onclose() {
      throw new RetriableError();
    },
    onerror(err) {
      result.errors.push(String(err));
      if (err instanceof FatalError) {
        throw err;
      }
    },
  });
}
report(false);
