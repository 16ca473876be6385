// The two browser globals @microsoft/fetch-event-source touches outside a browser: `window`
// (fetch and timers) and `document` (visibility). `fetches` counts the requests it makes, so a
// test can tell one connection from a reconnect loop.
export const counters = {fetches: 0};

globalThis.window = {
  fetch: (...args) => {
    counters.fetches += 1;
    return fetch(...args);
  },
  setTimeout: (...args) => setTimeout(...args),
  clearTimeout: (...args) => clearTimeout(...args),
};
globalThis.document = {hidden: false, addEventListener() {}, removeEventListener() {}};
