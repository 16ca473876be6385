// Checked by `tsc --noEmit -p tests/node` (tests/browser/test_gateway_d_ts.py): what a
// TypeScript page writes against static/gateway.d.ts. Never run; only type-checked.
import {
  compareIds,
  connect,
  DISCONNECTED,
  Gateway,
  GatewayError,
  isTerminal,
  type ConnectionState,
  type GatewayConnection,
  type GatewayEvent,
  type StateInfo,
} from '../../static/gateway.js';

interface Message {
  nick: string;
  text: string;
}

const gw: GatewayConnection = connect({token: 'eyJ...', shared: 'auto', heartbeat: 4000});
const own: GatewayConnection = connect('https://gw.example', {shared: false, transport: 'sse'});
const direct = new Gateway(undefined, {wsProbe: 0});

const offState = gw.on('state', (state: ConnectionState, info: StateInfo) => {
  if (state === 'closed' && info.code === DISCONNECTED) console.log('signed out:', info.reason);
  console.log(gw.transport, gw.sharing, gw.leader);
});
offState();
gw.on('subscribed', ({channel, server}) => console.log(channel, server));
gw.on('unsubscribed', ({channel, reason}) => console.log(channel, reason));
gw.on('event', (event: GatewayEvent) => console.log(event.id, event.type));
gw.on('error', (error: GatewayError) => console.log(error.code, error.channel));

const unsubscribe: () => void = gw.subscribe<Message>(
  'room:lobby',
  (event) => {
    const text: string = event.data.text;
    if (isTerminal(event)) console.log('done', text);
  },
  {since: '1732060800000-0', onGap: ({channel, since}) => console.warn(channel, since)},
);
unsubscribe();

async function send(): Promise<void> {
  const ack = await gw.publish('room:lobby', 'message', {nick: 'ada', text: 'hi'});
  const id: string | null = ack.id;
  if (id !== null && compareIds(id, '0-0') > 0) console.log(ack.channel);
  try {
    await own.publish('room:lobby', 'message', {}, {timeout: 1000});
  } catch (error) {
    if (error instanceof GatewayError) console.log(error.code);
  }
}
void send();
gw.wake('online');
direct.close();

// Mistakes the declarations catch:
// @ts-expect-error: no such transport
connect({transport: 'long-polling'});
// @ts-expect-error: no such event
gw.on('message', () => {});
// @ts-expect-error: the state is not writable
gw.state = 'open';
// @ts-expect-error: a channel is a string
gw.subscribe(42, () => {});
