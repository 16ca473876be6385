// gateway-worker.js: the SharedWorker that holds one gateway connection for all the tabs of an
// origin (started by gateway.js, which must be served beside it; see docs/gateway-js.md).
import {serveTabs} from './gateway.js';

serveTabs(globalThis);
