// Engine: the part of the client that talks to the server. It holds one
// connection (WebSocket) or one stream per subscription (SSE), the server
// subscriptions — one per distinct (name, params), however many views use
// it — with their rows, resume point and phase, and turns server messages
// into normalized messages for views:
//
//   {t: 'ops', ops: [{op, key, prevKey?, row, old?, event}], last, epoch}
//   {t: 'live', at, last, epoch}        the view is complete up to `at`
//   {t: 'reset', reason}                a new snapshot follows
//   {t: 'phase', phase}                 subscribing|snapshot|catchup|live|disconnected|failed
//   {t: 'error', code, message}
//   {t: 'message', event, prefix, content}
//
// A snapshot (initial, or after a reset) is collected aside and, at `live`,
// replaces the rows as one diff: views never show half a snapshot.

import { Emitter, backoffDelay, reportError } from './util.js';
import { RowSet } from './rowset.js';
import { maxEventId, compareEventIds } from './eventid.js';
import { WsTransport, SseTransport, resolveWebSocket, baseUrls } from './transport.js';

const FATAL_SUB_ERRORS = new Set(['unknown_subscription', 'forbidden', 'bad_params', 'bad_field', 'duplicate_id']);
const AUTH_ERRORS = /^(token_|role_not_found$|forbidden$)/;

export class Engine extends Emitter {
  /**
   * opts: url, token (string or async () => string), transport
   * ('websocket' | 'sse'), format ('json' | 'msgpack'), WebSocket, fetch,
   * backoff {base, max}, store (persistence, optional), subscribeOptions
   * (extra fields of every subscribe: chunkRows, batchSize, ...)
   */
  constructor(opts) {
    super();
    this.opts = opts;
    this.urls = baseUrls(opts.url);
    this.getToken = typeof opts.token === 'function' ? opts.token : async () => opts.token;
    this.transport = opts.transport ?? 'websocket';
    this.format = opts.format ?? 'json';
    this.subs = new Map();          // key -> sub
    this.byId = new Map();          // server-side id -> sub
    this.seq = 0;
    this.status = 'idle';
    this.conn = null;
    this.connecting = false;
    this.welcome = null;
    this.attempt = 0;
    this.openedAt = 0;
    this.nextAttemptAt = 0;
    this.online = true;
    this.stopped = false;
    this.timers = { reconnect: null, refresh: null, watchdog: null, send: null };
    this.sendQueue = [];
    this.sendSecond = 0;
    this.sentThisSecond = 0;
    this.saveTimers = new Map();
    this.stats = { connects: 0, welcomes: 0, messages: 0, resumed: 0, snapshots: 0, resets: 0, duplicates: 0 };
  }

  // ------------------------------------------------------------ public

  /**
   * Uses the server subscription spec.key (creating it on first use):
   * spec {key, name, params, keyCols}; seed (optional) {rows (dump), last,
   * epoch, resumable} to start from — cached rows and a resume point.
   */
  ensure(spec, seed) {
    let sub = this.subs.get(spec.key);
    if (sub) { sub.refs++; return sub; }
    sub = {
      key: spec.key, name: spec.name, params: spec.params ?? {}, keyCols: spec.keyCols ?? ['id'],
      rows: RowSet.fromDump(spec.keyCols ?? ['id'], seed?.rows),
      last: seed?.last ?? null, epoch: seed?.epoch ?? null,
      resumable: !!(seed?.resumable && seed?.last && seed?.epoch),
      live: false, phase: 'idle', refs: 1, id: null, pending: null, snapshotAt: null,
      attempt: 0, retry: null, stream: null,
    };
    this.subs.set(spec.key, sub);
    if (this.transport === 'sse') this._openSse(sub);
    else if (this.welcome && this.conn) this._sendSubscribe(sub);
    else this._connect();
    return sub;
  }

  release(key) {
    const sub = this.subs.get(key);
    if (!sub || --sub.refs > 0) return;
    this.subs.delete(key);
    clearTimeout(sub.retry);
    if (sub.id) {
      this.byId.delete(sub.id);
      if (this.conn && this.welcome) this._send({ type: 'unsubscribe', id: sub.id });
    }
    sub.stream?.close();
    this._flushSave(sub);
  }

  /** The state of a subscription, for a view that joins it. */
  stateOf(key) {
    const sub = this.subs.get(key);
    if (!sub) return null;
    return { rows: sub.rows.dump(), last: sub.last, epoch: sub.epoch, live: sub.live, phase: sub.phase };
  }

  setOnline(online) {
    if (this.online === online) return;
    this.online = online;
    if (!online) {
      this._setStatus('offline');
      this.conn?.close(4000, 'offline');
      for (const sub of this.subs.values()) sub.stream?.close();
    } else {
      this.attempt = 0;
      clearTimeout(this.timers.reconnect);
      if (this.transport === 'sse') for (const sub of this.subs.values()) this._openSse(sub);
      else this._connect();
    }
  }

  /** Drops the connection as if the network had (it reconnects and resumes). */
  drop() {
    this.conn?.close(4000, 'dropped');
    for (const sub of this.subs.values()) sub.stream?.close();
  }

  stop() {
    this.stopped = true;
    for (const t of Object.values(this.timers)) clearTimeout(t);
    for (const sub of this.subs.values()) { clearTimeout(sub.retry); sub.stream?.close(); this._flushSave(sub); }
    this.conn?.close(1000, 'closed');
    this._setStatus('closed');
  }

  // ------------------------------------------------------------ WebSocket

  async _connect() {
    if (this.stopped || !this.online || this.conn || this.connecting || this.subs.size === 0) return;
    if (this.transport === 'sse') return;
    this.connecting = true;
    clearTimeout(this.timers.reconnect);
    this._setStatus('connecting');
    let conn;
    try {
      const token = await this.getToken();
      const WS = await resolveWebSocket(this.opts.WebSocket);
      if (this.stopped || !this.online) { this.connecting = false; return; }
      conn = new WsTransport({
        url: this.urls.ws, format: this.format, WebSocket: WS,
        onOpen: () => conn.send({ type: 'auth', token }),
        onMessage: (m) => this._onMessage(conn, m),
        onClose: (info) => this._onClose(conn, info),
      });
      this.conn = conn;
      this.connecting = false;
      this.stats.connects++;
      this._watchdog(10000);
      await conn.open();
    } catch (e) {
      this.connecting = false;
      this.emit('error', { code: 'connect_failed', message: String(e?.message ?? e) });
      if (conn) conn.close(4000, 'connect_failed');
      else this._scheduleReconnect();
    }
  }

  _watchdog(ms) {
    clearTimeout(this.timers.watchdog);
    const conn = this.conn;
    this.timers.watchdog = setTimeout(() => { if (conn === this.conn) conn.close(4000, 'timeout'); }, ms);
  }

  _scheduleReconnect() {
    clearTimeout(this.timers.reconnect);
    if (this.stopped || !this.online || this.subs.size === 0) return;
    const delay = backoffDelay(this.attempt++, this.opts.backoff);
    this._setStatus('connecting');
    this.nextAttemptAt = Date.now() + delay;
    this.timers.reconnect = setTimeout(() => this._connect(), delay);
  }

  /**
   * Reconnects now if a reconnect is due but its timer has not fired (a
   * hidden tab's timers are throttled by the browser). Keeps the backoff.
   */
  kick() {
    if (this.transport === 'sse' || this.conn || this.connecting || this.stopped || !this.online) return false;
    if (!this.nextAttemptAt || Date.now() < this.nextAttemptAt) return false;
    clearTimeout(this.timers.reconnect);
    this._connect();
    return true;
  }

  _onClose(conn, info) {
    if (conn !== this.conn) return;
    this.conn = null;
    this.welcome = null;
    this.sendQueue = [];
    clearTimeout(this.timers.send);
    this.timers.send = null;
    clearTimeout(this.timers.refresh);
    clearTimeout(this.timers.watchdog);
    if (this.openedAt && Date.now() - this.openedAt > 10000) this.attempt = 0;
    this.openedAt = 0;
    for (const sub of this.subs.values()) this._disconnected(sub);
    this.emit('disconnect', info);
    if (this.stopped) return;
    if (!this.online) { this._setStatus('offline'); return; }
    this._scheduleReconnect();
  }

  _disconnected(sub) {
    if (sub.id) this.byId.delete(sub.id);
    sub.id = null;
    clearTimeout(sub.retry);
    sub.pending = null;            // a snapshot cut short is taken again
    sub.live = false;
    this._phase(sub, 'disconnected');
  }

  _onMessage(conn, m) {
    if (conn !== this.conn || !m || typeof m !== 'object') return;
    this.stats.messages++;
    const hb = this.welcome?.heartbeatMs || 25000;
    this._watchdog(Math.max(2 * hb + 5000, 10000));
    switch (m.type) {
      case 'welcome':
        this.welcome = m;
        this.stats.welcomes++;
        this.openedAt = Date.now();
        this._setStatus('open');
        this._scheduleRefresh(m.exp);
        this._watchdog(Math.max(2 * (m.heartbeatMs || 25000) + 5000, 10000));
        for (const sub of this.subs.values()) this._sendSubscribe(sub);
        this.emit('welcome', m);
        return;
      case 'refreshed':
        this._scheduleRefresh(m.exp);
        this.emit('refreshed', m);
        return;
      case 'heartbeat':
      case 'pong':
        return;
      case 'error': {
        const sub = m.ref != null ? this.byId.get(m.ref) : null;
        if (sub) { this._subError(sub, m); return; }
        this.emit('error', m);
        // a refresh that failed: reconnect with a new token before expiry
        if (AUTH_ERRORS.test(m.code ?? '')) conn.close(4000, 'refresh_failed');
        return;
      }
      default: {
        const sub = this.byId.get(m.id);
        if (sub) this._subMessage(sub, m);
      }
    }
  }

  _scheduleRefresh(exp) {
    clearTimeout(this.timers.refresh);
    if (typeof exp !== 'number' || !exp) return;
    const remaining = exp * 1000 - Date.now();
    const margin = this.opts.refreshMarginMs;
    const delay = Math.max(500, margin != null ? remaining - margin : Math.max(remaining * 0.5, remaining - 60000));
    const conn = this.conn;
    this.timers.refresh = setTimeout(async () => {
      try {
        const token = await this.getToken();
        if (conn === this.conn) this._send({ type: 'refresh', token });
      } catch (e) {
        this.emit('error', { code: 'token_provider_failed', message: String(e?.message ?? e) });
        this._scheduleRefresh(exp);
      }
    }, Math.min(delay, 2 ** 31 - 1));
  }

  _sendSubscribe(sub) {
    clearTimeout(sub.retry);
    if (sub.id) this.byId.delete(sub.id);
    sub.id = 's' + (++this.seq);
    this.byId.set(sub.id, sub);
    const msg = { ...(this.opts.subscribeOptions ?? {}), type: 'subscribe', id: sub.id,
      subscription: sub.name, params: sub.params, snapshot: true };
    if (sub.resumable && sub.last && sub.epoch) msg.resume = { epoch: sub.epoch, after: sub.last };
    sub.pending = null;
    sub.live = false;
    this._phase(sub, 'subscribing');
    this._send(msg);
  }

  // Sends within the server's rate limit (welcome.limits.maxMessagesPerSecond,
  // counted per wall-clock second; a message over it would be dropped):
  // at most 80 % of it per second, the rest queued for the next seconds.
  _send(msg) {
    const conn = this.conn;
    if (!conn) return;
    const limit = Math.max(1, Math.floor((this.welcome?.limits?.maxMessagesPerSecond ?? 100) * 0.8));
    const sec = Math.floor(Date.now() / 1000);
    if (this.sendSecond !== sec) { this.sendSecond = sec; this.sentThisSecond = 0; }
    if (!this.sendQueue.length && this.sentThisSecond < limit) {
      this.sentThisSecond++;
      conn.send(msg);
      return;
    }
    this.sendQueue.push(msg);
    if (this.timers.send) return;
    const flush = () => {
      this.timers.send = null;
      if (conn !== this.conn) { this.sendQueue = []; return; }
      const now = Math.floor(Date.now() / 1000);
      if (this.sendSecond !== now) { this.sendSecond = now; this.sentThisSecond = 0; }
      while (this.sendQueue.length && this.sentThisSecond < limit) {
        this.sentThisSecond++;
        conn.send(this.sendQueue.shift());
      }
      if (this.sendQueue.length) this.timers.send = setTimeout(flush, 1000 - (Date.now() % 1000) + 5);
    };
    this.timers.send = setTimeout(flush, 1000 - (Date.now() % 1000) + 5);
  }

  _subError(sub, m) {
    this.emit('suberror', sub.key, m);
    this._emitSub(sub, { t: 'error', code: m.code, message: m.message });
    if (sub.phase !== 'subscribing') return;          // e.g. change_too_large: a reset follows
    this.byId.delete(sub.id);
    sub.id = null;
    if (FATAL_SUB_ERRORS.has(m.code)) { this._phase(sub, 'failed'); return; }
    // too_many_subscriptions, rate_limited, internal: try again later
    const delay = backoffDelay(sub.attempt++, this.opts.backoff);
    sub.retry = setTimeout(() => { if (this.conn && this.welcome && this.subs.get(sub.key) === sub) this._sendSubscribe(sub); }, delay);
  }

  // ------------------------------------------------------------ SSE

  async _openSse(sub) {
    if (this.stopped || !this.online || this.subs.get(sub.key) !== sub) return;
    if (sub.stream && !sub.stream.closed) return;
    clearTimeout(sub.retry);
    this._phase(sub, 'subscribing');
    let token;
    try { token = await this.getToken(); } catch (e) {
      this.emit('error', { code: 'token_provider_failed', message: String(e?.message ?? e) });
      sub.retry = setTimeout(() => this._openSse(sub), backoffDelay(sub.attempt++, this.opts.backoff));
      return;
    }
    const query = { snapshot: 'true' };
    for (const k of ['batchSize', 'chunkRows', 'chunkBytes', 'includeMetadata']) {
      if (this.opts.subscribeOptions?.[k] != null) query[k] = this.opts.subscribeOptions[k];
    }
    const stream = new SseTransport({
      url: this.urls.http, subscription: sub.name, params: sub.params, token, query, fetch: this.opts.fetch,
      lastEventId: sub.resumable && sub.last && sub.epoch ? `${sub.last}@${sub.epoch}` : null,
      onMessage: (m) => {
        if (stream !== sub.stream) return;
        this.stats.messages++;
        if (m.type === 'welcome') {
          this.welcome = m;
          this.stats.welcomes++;
          sub.epochSeen = m.epoch;
          this._setStatus('open');
          this.emit('welcome', m);
        } else if (m.type === 'error') {
          this._emitSub(sub, { t: 'error', code: m.code, message: m.message });
        } else if (m.type !== 'heartbeat') {
          sub.attempt = 0;
          this._subMessage(sub, m);
        }
      },
      onClose: (info) => {
        if (stream !== sub.stream) return;
        sub.stream = null;
        this._disconnected(sub);
        if (this.stopped || this.subs.get(sub.key) !== sub) return;
        if (!this.online) { this._setStatus('offline'); return; }
        if (info.status && info.status !== 401 && info.status < 500 && FATAL_SUB_ERRORS.has(info.reason)) {
          this._emitSub(sub, { t: 'error', code: info.reason, message: info.message ?? '' });
          this._phase(sub, 'failed');
          return;
        }
        if (info.status) this._emitSub(sub, { t: 'error', code: info.reason, message: info.message ?? '' });
        this._setStatus('connecting');
        sub.retry = setTimeout(() => this._openSse(sub), backoffDelay(sub.attempt++, this.opts.backoff));
      },
    });
    sub.stream = stream;
    sub.id = 'sse';
    this.stats.connects++;
    stream.open();
  }

  // ------------------------------------------------------------ subscription messages

  _subMessage(sub, m) {
    switch (m.type) {
      case 'subscribed':
        sub.epoch = m.epoch ?? this.welcome?.epoch ?? sub.epoch;
        sub.attempt = 0;
        if (m.snapshot) {
          this.stats.snapshots++;
          sub.pending = new RowSet(sub.keyCols);
          sub.snapshotAt = m.at ?? null;
          sub.resumable = false;
          sub.last = null;          // the snapshot is the new base; live.at the new resume point
          this._phase(sub, 'snapshot');
        } else if (m.resumed) {
          this.stats.resumed++;
          this._phase(sub, 'catchup');
        } else {
          // no snapshot was sent (a server without snapshots): live from `at`
          sub.last = m.at ?? null;
          this._live(sub, m.at);
        }
        return;
      case 'snapshot': {
        if (!sub.pending) { sub.pending = new RowSet(sub.keyCols); }
        for (const row of m.rows ?? []) {
          const k = sub.pending.keyOf(row);
          if (k != null) sub.pending.map.set(k, { row, event: sub.snapshotAt });
        }
        return;
      }
      case 'change':
        this._changes(sub, [m]);
        return;
      case 'changes':
        this._changes(sub, m.events ?? []);
        return;
      case 'live':
        if (m.epoch) sub.epoch = m.epoch;
        if (sub.pending) {
          const ops = sub.rows.replace(sub.pending.map);
          sub.pending = null;
          if (ops.length) this._emitSub(sub, { t: 'ops', ops, last: sub.last, epoch: sub.epoch });
        }
        sub.last = maxEventId(sub.last, m.at ?? null);
        this._live(sub, m.at);
        return;
      case 'reset':
        this.stats.resets++;
        sub.resumable = false;
        sub.last = null;
        sub.pending = null;
        sub.live = false;
        this._emitSub(sub, { t: 'reset', reason: m.reason });
        this._save(sub);
        // while subscribing, the server goes on with a snapshot (we asked
        // for one); an open subscription was closed: subscribe again
        if (sub.phase !== 'subscribing') {
          if (this.transport === 'sse') return;     // the stream goes on with a snapshot or ends
          if (this.conn && this.welcome) this._sendSubscribe(sub);
        }
        return;
      case 'message':
        this._emitSub(sub, { t: 'message', event: m.event, prefix: m.prefix, content: m.content });
        return;
      case 'unsubscribed':
        return;
      default:
    }
  }

  _live(sub, at) {
    sub.resumable = !!(sub.last && sub.epoch);
    sub.live = true;
    this._phase(sub, 'live');
    this._emitSub(sub, { t: 'live', at: at ?? null, last: sub.last, epoch: sub.epoch });
    this._save(sub);
  }

  _changes(sub, events) {
    if (sub.pending) {
      // between the snapshot's last chunk and live: part of the snapshot
      for (const e of events) sub.pending.applyChange(e);
      return;
    }
    const ops = [];
    for (const e of events) {
      // a change at or before the resume point was applied already (the
      // stream is at-least-once across reconnects): skip it
      if (e.event && sub.last && compareEventIds(e.event, sub.last) <= 0) { this.stats.duplicates++; continue; }
      const op = sub.rows.applyChange(e);
      if (e.event) sub.last = maxEventId(sub.last, e.event);
      if (op) ops.push(op);
    }
    if (ops.length) this._emitSub(sub, { t: 'ops', ops, last: sub.last, epoch: sub.epoch });
    else this._emitSub(sub, { t: 'ops', ops: [], last: sub.last, epoch: sub.epoch });
    this._save(sub);
  }

  _phase(sub, phase) {
    if (sub.phase === phase) return;
    sub.phase = phase;
    this._emitSub(sub, { t: 'phase', phase });
  }

  _emitSub(sub, msg) {
    this.emit('sub', sub.key, msg);
  }

  _setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.emit('status', s);
  }

  // ------------------------------------------------------------ persistence

  _save(sub) {
    const store = this.opts.store;
    if (!store || this.saveTimers.has(sub.key)) return;
    // 100 ms, longer for big views (every save writes the whole view)
    const delay = this.opts.saveDelayMs ?? 100 + Math.floor(sub.rows.size / 50);
    this.saveTimers.set(sub.key, setTimeout(() => this._flushSave(sub), delay));
  }

  _flushSave(sub) {
    const store = this.opts.store;
    const t = this.saveTimers.get(sub.key);
    if (!store || t === undefined) return;
    clearTimeout(t);
    this.saveTimers.delete(sub.key);
    store.putSubscription(sub.key, {
      key: sub.key, name: sub.name, params: sub.params, keyCols: sub.keyCols,
      rows: sub.rows.dump(), last: sub.last, epoch: sub.epoch, resumable: sub.resumable && !sub.pending,
      savedAt: Date.now(),
    }).catch(reportError);
  }
}
