// The chat panel: join a `room:` channel, send and read messages, and see who is online there,
// live: the room's presence list (`GET /channels/{channel}/presence`, paged) kept up to date by
// the `presence.join` / `presence.leave` events that arrive on the room's channel. A gateway
// without presence (404) or one that does not let this page read it (401/403) leaves the chat
// working and says so in place of the list.

import {$, el} from '/static/dom.js';

const PRESENCE_REFRESHES = [1000, 3000];  // re-reads (ms after the last): the first read can overtake our own subscribe
const PRESENCE_PAGES = 10; // at most 10 pages of the room's members on join; the count stays exact
const PRESENCE_PAGE = 100;

/** What to call a presence entry: its `info.nick` or `info.name`, its user, or "guest <id>". */
export function nameOf(entry) {
  const info = entry && typeof entry.info === 'object' && entry.info ? entry.info : {};
  const name = info.nick || info.name || entry.user;
  return typeof name === 'string' && name ? name : `guest ${String(entry.client || '').slice(0, 6)}`;
}

export function startChat(gw) {
  let room = null;
  window.dashboard.presence = {state: 'none', clients: []};

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
    const current = {channel, nick, online: new Map(), changedAt: new Map(), unsubscribe: null};
    room = current;
    current.unsubscribe = gw.subscribe(channel, (event) => {
      if (event.type === 'presence.join' || event.type === 'presence.leave') {
        presenceChanged(current, event);
        return;
      }
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
    renderOnline(current);
    loadPresence(current);
    $('message-text').focus();
  }

  function leaveRoom() {
    if (!room) return;
    room.unsubscribe();
    room = null;
    window.dashboard.presence = {state: 'none', clients: []};
    $('room').hidden = true;
  }

  // --- who is online ----------------------------------------------------------------------

  async function loadPresence(current, refresh = 0) {
    if (refresh === 0) setPresenceState(current, 'loading');
    const started = Date.now();
    let cursor = null;
    const found = [];
    for (let page = 0; page < PRESENCE_PAGES; page += 1) {
      const query = new URLSearchParams({limit: String(PRESENCE_PAGE)});
      if (cursor) query.set('cursor', cursor);
      let response;
      try {
        response = await fetch(`/channels/${encodeURIComponent(current.channel)}/presence?${query}`, {cache: 'no-store'});
      } catch (err) {
        if (room === current) setPresenceState(current, 'error', 'Cannot load who is online.');
        return;
      }
      if (room !== current) return;
      if (response.status === 404) {
        setPresenceState(current, 'unavailable', 'This gateway does not report who is online.');
        return;
      }
      if (response.status === 401 || response.status === 403) {
        const problem = await response.json().catch(() => ({}));
        const why = problem.detail || 'this page may not read it';
        setPresenceState(current, 'unavailable', `Who is online is not shown: ${why}.`.replace('..', '.'));
        return;
      }
      if (!response.ok) {
        setPresenceState(current, 'error', `Cannot load who is online (${response.status}).`);
        return;
      }
      const body = await response.json().catch(() => ({}));
      found.push(...(body.clients || []));
      cursor = body.next;
      if (!cursor) break;
    }
    if (room !== current) return;
    // The snapshot is newer than what was heard of a client before the read began; a join or
    // leave heard since wins over it.
    const listed = new Set(found.map((entry) => entry.client));
    for (const entry of found) {
      if ((current.changedAt.get(entry.client) || 0) < started) current.online.set(entry.client, entry);
    }
    for (const client of [...current.online.keys()]) {
      if (!listed.has(client) && (current.changedAt.get(client) || 0) < started) current.online.delete(client);
    }
    setPresenceState(current, 'live');
    // Our own subscribe travels through the shared connection and may reach the gateway after
    // this read; until it is live we hear no joins (ours included). Read again to settle.
    if (refresh < PRESENCE_REFRESHES.length) {
      setTimeout(() => { if (room === current) loadPresence(current, refresh + 1); }, PRESENCE_REFRESHES[refresh]);
    }
  }

  function presenceChanged(current, event) {
    const entry = event.data || {};
    if (!entry.client) return;
    const joined = event.type === 'presence.join';
    current.changedAt.set(entry.client, Date.now());
    if (joined) current.online.set(entry.client, entry);
    else current.online.delete(entry.client);
    $('messages').append(el('li', {class: 'notice'}, `${nameOf(entry)} ${joined ? 'joined' : 'left'}`));
    renderOnline(current);
  }

  function setPresenceState(current, state, note = '') {
    current.presence = state;
    $('online-note').textContent = note;
    $('online-note').hidden = !note;
    $('online-list').hidden = state === 'unavailable' || state === 'error';
    $('online-count').hidden = state === 'unavailable' || state === 'error';
    $('room').querySelector('.online').dataset.state = state;
    renderOnline(current);
  }

  function renderOnline(current) {
    const entries = [...current.online.values()].sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
    $('online-count').textContent = String(entries.length);
    $('online-list').replaceChildren(...entries.map((entry) => el('li', {
      'data-client': entry.client,
      title: entry.user ? `user ${entry.user}, connection ${entry.client}` : `connection ${entry.client}`,
    }, el('span', {class: 'presence-dot', 'aria-hidden': 'true'}), nameOf(entry))));
    window.dashboard.presence = {state: current.presence || 'loading', clients: entries};
  }

  // --- messages ---------------------------------------------------------------------------

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
}
