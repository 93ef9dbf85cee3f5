// A small in-process stand-in for the rtsub server's protocol
// (docs/protocol.md), for unit tests of the client's protocol handling:
// WebSocket (auth/welcome, subscribe with snapshot (in chunks) / resume /
// reset, change, live, refresh, unsubscribe; JSON and MessagePack) and SSE
// (GET /v1/sse, snapshot, Last-Event-ID resume, id: lines). One table of
// rows with an `org` column; a subscription's params.org selects rows.
// Tests drive it: commit(), resetAll(), dropAll(), silence().
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { encode, decode } from '@msgpack/msgpack';

export async function mockServer({ chunkRows = 2, epoch = '00000000000000aa', maxMessagesPerSecond = 100 } = {}) {
  const httpServer = http.createServer((req, res) => sse(req, res));
  const wss = new WebSocketServer({ server: httpServer, handleProtocols: (ps) => [...ps][0] });
  await new Promise((r) => httpServer.listen(0, '127.0.0.1', r));
  const state = {
    epoch, lsn: 0x100, rows: new Map(), log: [], sessions: new Set(), received: [], silent: false,
  };
  const id = () => `0/${state.lsn.toString(16).toUpperCase()}`;
  const visible = (row, params) => row && row.org === params.org;

  function send(s, m) {
    if (s.silent) return;
    if (s.sse) {
      if (s.sse.destroyed) return;
      const at = m.type === 'change' ? m.event : m.type === 'live' ? m.at : null;
      s.sse.write(`${at ? `id: ${at}@${state.epoch}\n` : ''}event: ${m.type}\ndata: ${JSON.stringify(m)}\n\n`);
      return;
    }
    if (s.ws.readyState !== 1) return;
    s.ws.send(s.msgpack ? encode(m) : JSON.stringify(m));
  }

  function subscribe(s, m) {
    const sub = { params: m.params ?? {} };
    s.subs.set(m.id, sub);
    if (m.resume) {
      const i = state.log.findIndex((e) => e.event === m.resume.after);
      const known = m.resume.epoch === state.epoch && (i >= 0 || m.resume.after === `${id()}:0`);
      if (!known) {
        send(s, { type: 'reset', id: m.id, reason: m.resume.epoch === state.epoch ? 'beyond_window' : 'epoch_changed' });
        if (m.snapshot) snapshot(s, sub, m.id); else s.subs.delete(m.id);
        return;
      }
      send(s, { type: 'subscribed', id: m.id, at: m.resume.after, epoch: state.epoch, snapshot: false, resumed: true });
      for (const e of state.log.slice(i + 1)) {
        const ch = filterChange(e, sub.params);
        if (ch) send(s, { type: 'change', id: m.id, ...ch });
      }
      send(s, { type: 'live', id: m.id, at: state.log.at(-1)?.event ?? m.resume.after, epoch: state.epoch });
    } else if (m.snapshot) {
      snapshot(s, sub, m.id);
    } else {
      send(s, { type: 'subscribed', id: m.id, at: `${id()}:0`, epoch: state.epoch, snapshot: false, resumed: false });
    }
  }

  // GET /v1/sse?subscription=&params=&snapshot=&access_token= [Last-Event-ID: id@epoch]
  function sse(req, res) {
    const url = new URL(req.url, 'http://x');
    if (url.pathname !== '/v1/sse') { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
    const s = { sse: res, subs: new Map() };
    state.sessions.add(s);
    res.on('close', () => state.sessions.delete(s));
    send(s, { type: 'welcome', protocol: 1, server: 'mock', epoch: state.epoch, role: 'r',
      exp: Math.floor(Date.now() / 1000) + 3600, heartbeatMs: 1000, limits: {} });
    const m = { type: 'subscribe', id: 'sse', subscription: url.searchParams.get('subscription'),
      params: JSON.parse(url.searchParams.get('params') ?? '{}'), snapshot: url.searchParams.get('snapshot') === 'true',
      sse: true, lastEventId: req.headers['last-event-id'] ?? null };
    if (m.lastEventId) {
      const [after, epoch] = m.lastEventId.split('@');
      m.resume = { epoch, after };
    }
    state.received.push(m);
    subscribe(s, m);
  }

  function snapshot(s, sub, cid) {
    const at = `${id()}:0`;
    send(s, { type: 'subscribed', id: cid, at, epoch: state.epoch, snapshot: true, resumed: false });
    const rows = [...state.rows.values()].filter((r) => visible(r, sub.params));
    let chunk = 0;
    for (let i = 0; i === 0 || i < rows.length; i += chunkRows) {
      const part = rows.slice(i, i + chunkRows);
      send(s, { type: 'snapshot', id: cid, chunk: chunk++, rows: part, last: i + chunkRows >= rows.length });
    }
    send(s, { type: 'live', id: cid, at, epoch: state.epoch });
  }

  wss.on('connection', (ws, req) => {
    const s = { ws, msgpack: ws.protocol === 'rtsub.v1.msgpack', subs: new Map(), authed: false };
    state.sessions.add(s);
    ws.on('close', () => state.sessions.delete(s));
    ws.on('message', (data, isBinary) => {
      const m = isBinary ? decode(data) : JSON.parse(data.toString());
      // the server's rate limit: messages over it in a wall-clock second are dropped
      const sec = Math.floor(Date.now() / 1000);
      if (s.second !== sec) { s.second = sec; s.count = 0; }
      if (++s.count > maxMessagesPerSecond) { state.dropped = (state.dropped ?? 0) + 1; return; }
      state.received.push(m);
      if (m.type === 'auth') {
        s.authed = true;
        send(s, { type: 'welcome', protocol: 1, server: 'mock', epoch: state.epoch, role: 'r',
          exp: Math.floor(Date.now() / 1000) + 3600, heartbeatMs: 1000, limits: { maxMessagesPerSecond } });
      } else if (m.type === 'subscribe') {
        subscribe(s, m);
      } else if (m.type === 'unsubscribe') {
        s.subs.delete(m.id);
        send(s, { type: 'unsubscribed', id: m.id });
      } else if (m.type === 'refresh') {
        send(s, { type: 'refreshed', exp: Math.floor(Date.now() / 1000) + 3600 });
      } else if (m.type === 'ping') {
        send(s, { type: 'pong', nonce: m.nonce });
      }
    });
  });

  // move-in / move-out as the server does them
  function filterChange(e, params) {
    const was = visible(e.oldRow, params);
    const is = visible(e.row, params);
    if (!was && !is) return null;
    const op = e.op === 'update' ? (was && is ? 'update' : was ? 'delete' : 'insert') : e.op;
    const row = e.op === 'delete' ? e.oldRow : e.row;
    return { event: e.event, op, row, old: e.oldRow ? { id: e.oldRow.id } : undefined, ts: new Date().toISOString() };
  }

  return {
    url: `http://127.0.0.1:${httpServer.address().port}`,
    state,
    /** commits one transaction of [op, row] (update/delete by row.id) */
    commit(...changes) {
      state.lsn += 0x10;
      changes.forEach(([op, row], pos) => {
        const oldRow = state.rows.get(row.id) ?? null;
        if (op === 'delete') state.rows.delete(row.id); else state.rows.set(row.id, row);
        const e = { event: `${id()}:${pos}`, op, row: op === 'delete' ? null : row, oldRow };
        state.log.push(e);
        for (const s of state.sessions) {
          for (const [cid, sub] of s.subs) {
            const ch = filterChange(e, sub.params);
            if (ch) send(s, { type: 'change', id: cid, ...ch });
          }
        }
      });
    },
    /** the server cannot keep the open subscriptions exact */
    resetAll(reason = 'beyond_window') {
      for (const s of state.sessions) for (const cid of [...s.subs.keys()]) {
        send(s, { type: 'reset', id: cid, reason });
        s.subs.delete(cid);
      }
    },
    newEpoch(e) { state.epoch = e; state.log = []; },
    /** sends the last logged change again to every subscriber (an at-least-once replay) */
    replayLast() {
      const e = state.log.at(-1);
      for (const s of state.sessions) for (const [cid, sub] of s.subs) {
        const ch = filterChange(e, sub.params);
        if (ch) send(s, { type: 'change', id: cid, ...ch });
      }
    },
    dropAll() { for (const s of state.sessions) { if (s.sse) s.sse.destroy(); else s.ws.terminate(); } },
    /** the open sessions stop sending (new ones do not) */
    silence(on = true) { for (const s of state.sessions) s.silent = on; },
    subscribes() { return state.received.filter((m) => m.type === 'subscribe'); },
    close() {
      for (const s of state.sessions) { if (s.sse) s.sse.destroy(); else s.ws.terminate(); }
      wss.close();
      httpServer.close();
    },
  };
}
