// The chat panel: join a `room:` channel, send and read messages, and see who is online there,
// live: the room's presence list (`GET /channels/{channel}/presence`, paged) kept up to date by
// the `presence.join` / `presence.leave` events that arrive on the room's channel. A gateway
// without presence (404) or one that does not let this page read it (401/403) leaves the chat
// working and says so in place of the list.

import {$, el} from '/static/dom.js';

const PRESENCE_RETRIES = 8;  // reads of an empty list while our own subscribe is on its way
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
    const current = {channel, nick, online: new Map(), left: new Set(), unsubscribe: null};
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

  async function loadPresence(current, attempt = 0) {
    if (attempt === 0) setPresenceState(current, 'loading');
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
    if (found.length === 0 && current.online.size === 0 && attempt < PRESENCE_RETRIES) {
      // This page is in the room, so the list cannot be empty: the read overtook our own
      // subscribe on its way to the gateway (and our own join event with it). Read again.
      setTimeout(() => loadPresence(current, attempt + 1), 200 * (attempt + 1));
      return;
    }
    // Joins heard meanwhile are already in; a leave heard meanwhile wins over the snapshot.
    for (const entry of found) {
      if (!current.left.has(entry.client) && !current.online.has(entry.client)) {
        current.online.set(entry.client, entry);
      }
    }
    setPresenceState(current, 'live');
  }

  function presenceChanged(current, event) {
    const entry = event.data || {};
    if (!entry.client) return;
    const joined = event.type === 'presence.join';
    if (joined) {
      current.left.delete(entry.client);
      current.online.set(entry.client, entry);
    } else {
      current.left.add(entry.client);
      current.online.delete(entry.client);
    }
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
