// The npm `eventsource` package used as its README shows, on a gateway stream:
//   node eventsource_client.mjs URL [MAX_MESSAGES]
// Every message's data is parsed as JSON (a parse error crashes the script, failing the test).
// Runs until the EventSource closes itself (a 204 on reconnect after a job's terminal event) or
// MAX_MESSAGES arrived, then prints {messages, opens, errors, closed, timedOut} as JSON on stdout.
// Gives up after 20 s. (The package unrefs its reconnect timer, so this deadline is also what
// keeps node running while it waits to reconnect.)
import {EventSource} from 'eventsource';

const [url, max] = process.argv.slice(2);
const limit = max ? Number(max) : Infinity;
const result = {messages: [], opens: 0, errors: [], closed: false, timedOut: false};
const deadline = setTimeout(() => {
  result.timedOut = true;
  finish();
}, 20000);
const finish = () => {
  clearTimeout(deadline);
  es.close();
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
};

const es = new EventSource(url);
es.onopen = () => {
  result.opens += 1;
};
es.onmessage = (event) => {
  result.messages.push(JSON.parse(event.data));
  if (result.messages.length >= limit) finish();
};
es.onerror = (error) => {
  result.errors.push({code: error.code ?? null, message: error.message ?? null});
  if (es.readyState === EventSource.CLOSED) {
    result.closed = true;
    finish();
  }
};
