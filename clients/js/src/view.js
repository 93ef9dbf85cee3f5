// Subscription: the live view a tab holds of one server subscription — the
// server's rows by key (RowSet), the effect of this tab's queued writes on
// top of them (optimistic), the sync status of each row and of the whole.

import { Emitter, canonicalJson } from './util.js';
import { RowSet } from './rowset.js';

const HANDLERS = {
  onInsert: 'insert', onUpdate: 'update', onDelete: 'delete', onLive: 'live', onReset: 'reset',
  onError: 'error', onStatus: 'status', onRowStatus: 'rowstatus', onChange: 'change', onMessage: 'message',
  onCache: 'cache',
};

export class Subscription extends Emitter {
  constructor(client, name, params, options = {}) {
    super();
    this.client = client;
    this.name = name;
    this.params = params ?? {};
    this.keyCols = options.key ?? ['id'];
    this.orderBy = options.orderBy ?? null;
    this.versionColumn = options.version ?? null;
    this.conflictPolicy = options.conflict ?? 'lww';
    this.onConflict = options.onConflict ?? null;
    this.key = client._subKey(name, this.params);
    this.server = new RowSet(this.keyCols);
    this.last = null;
    this.epoch = null;
    this.resumable = false;
    this.live = false;
    this.phase = 'idle';
    this.fromCache = false;
    this.closed = false;
    this.settling = new Map();          // row key -> written entries awaiting the server's echo
    this._status = 'pending';
    this._rowStatus = new Map();        // row key -> 'pending' | 'conflict'
    this.lastError = null;
    for (const [h, ev] of Object.entries(HANDLERS)) if (typeof options[h] === 'function') this.on(ev, options[h]);
    // resolves at the first live; rejects if the server refuses the subscription
    this.ready = new Promise((resolve, reject) => {
      this.once('live', () => resolve(this));
      this.on('phase', (p) => {
        if (p === 'failed') reject(Object.assign(new Error(`rtsub: subscription ${name} failed: ${this.lastError?.code ?? 'error'}`), { code: this.lastError?.code }));
      });
    });
    this.ready.catch(() => {});     // not an unhandled rejection when nobody awaits it
  }

  // ------------------------------------------------------------ reading

  /** The current rows (with this tab's pending writes applied), ordered. */
  rows() {
    const out = [];
    const keys = new Set(this.server.map.keys());
    for (const k of this._localKeys()) keys.add(k);
    for (const k of keys) {
      const r = this._display(k);
      if (r) out.push(r);
    }
    return out.sort(this._compare());
  }

  get size() { return this.rows().length; }

  /** One row by key values ({id: 3}, a row, or a primary-key value) or null. */
  get(keyOrRow) {
    return this._display(this.keyOf(keyOrRow)) ?? null;
  }

  keyOf(keyOrRow) {
    if (keyOrRow !== null && typeof keyOrRow === 'object') return this.server.keyOf(keyOrRow);
    if (typeof keyOrRow === 'string' && keyOrRow.startsWith('[')) return keyOrRow;
    return canonicalJson([keyOrRow]);
  }

  /** 'synced' | 'pending' | 'conflict' for the whole subscription. */
  get status() { return this._status; }

  /** 'synced' | 'pending' | 'conflict' for one row. */
  rowStatus(keyOrRow) { return this._rowStatus.get(this.keyOf(keyOrRow)) ?? 'synced'; }

  /** The server's version of a row: the version column, or the event id of its last change. */
  serverVersion(key) {
    const e = this.server.map.get(key);
    if (!e) return null;
    return this.versionColumn ? canonicalJson(e.row[this.versionColumn]) : e.event;
  }

  serverRow(key) { return this.server.map.get(key)?.row ?? null; }

  // ------------------------------------------------------------ writing

  insert(row, opts = {}) {
    return this._write('insert', this.server.keyOf(row), { row }, opts);
  }

  update(keyOrRow, patch, opts = {}) {
    return this._write('update', this.keyOf(keyOrRow), { patch }, opts);
  }

  delete(keyOrRow, opts = {}) {
    return this._write('delete', this.keyOf(keyOrRow), {}, opts);
  }

  _write(op, key, body, opts) {
    if (key == null) throw new Error(`rtsub: the row has no key columns (${this.keyCols.join(', ')})`);
    const base = this.serverRow(key);
    return this.client._queueWrite({
      op, key, subKey: this.key, subscription: this.name, params: this.params,
      base, baseVersion: this.serverVersion(key), checkVersion: op !== 'insert',
      policy: opts.conflict ?? this.conflictPolicy, priority: opts.priority, data: opts.data, ...body,
    });
  }

  /** Settles a parked conflict of one of this view's writes. */
  resolveConflict(id, value) { return this.client.writes.resolve(id, value); }

  /** This view's queued writes. */
  pendingWrites() { return this.client.writes.list().filter((e) => e.subKey === this.key); }

  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._unsubscribe(this);
  }

  // ------------------------------------------------------------ internals

  _localKeys() {
    const keys = [];
    for (const e of this.client.writes.items) if (e.subKey === this.key && e.key != null) keys.push(e.key);
    for (const k of this.settling.keys()) keys.push(k);
    return keys;
  }

  _entriesFor(key) {
    const out = [];
    for (const e of this.settling.get(key) ?? []) out.push(e);
    for (const e of this.client.writes.items) if (e.subKey === this.key && e.key === key) out.push(e);
    return out.sort((a, b) => a.seq - b.seq);
  }

  _display(key) {
    if (key == null) return undefined;
    let row = this.server.get(key);
    for (const e of this._entriesFor(key)) {
      if (e.op === 'delete') row = undefined;
      else if (e.op === 'insert') row = { ...(row ?? {}), ...e.row };
      else if (e.op === 'update' && row) row = { ...row, ...e.patch };
    }
    return row;
  }

  _compare() {
    const ob = this.orderBy;
    if (typeof ob === 'function') return ob;
    const cols = ob ? (Array.isArray(ob) ? ob : [ob]) : this.keyCols;
    return (a, b) => {
      for (const spec of cols) {
        const desc = spec.startsWith('-');
        const c = desc ? spec.slice(1) : spec;
        const x = a[c];
        const y = b[c];
        if (x === y) continue;
        if (x == null) return desc ? 1 : -1;
        if (y == null) return desc ? -1 : 1;
        const r = x < y ? -1 : 1;
        return desc ? -r : r;
      }
      return 0;
    };
  }

  // emits insert/update/delete for the display row of `key`, from `before`
  _emitDisplay(key, before, meta) {
    const after = this._display(key);
    if (before === undefined && after === undefined) return false;
    if (before === undefined) this.emit('insert', after, meta);
    else if (after === undefined) this.emit('delete', before, meta);
    else if (canonicalJson(before) !== canonicalJson(after)) this.emit('update', after, { ...meta, old: before });
    else return false;
    return true;
  }

  /** A normalized message from the engine (directly, or relayed by the leader tab). */
  _receive(msg) {
    if (this.closed) return;
    switch (msg.t) {
      case 'ops': {
        this._applyOps(msg.ops, { source: 'server' });
        if (msg.last) this.last = msg.last;          // the engine's resume point
        if (msg.epoch) this.epoch = msg.epoch;
        return;
      }
      case 'state': {
        const s = msg.state;
        const next = RowSet.fromDump(this.keyCols, s.rows);
        const before = this._snapshotDisplay([...this.server.map.keys(), ...next.map.keys()]);
        this.server.map = next.map;
        let changed = false;
        for (const [k, b] of before) changed = this._emitDisplay(k, b, { key: k, source: 'state' }) || changed;
        this.last = s.last;
        this.epoch = s.epoch;
        this.resumable = !!(s.live && s.last);
        if (changed) this.emit('change', this);
        if (s.phase) this._setPhase(s.phase);
        if (s.live && !this.live) this._setLive(s.last);
        this._updateStatus();
        return;
      }
      case 'live':
        this.last = msg.last ?? msg.at ?? this.last;
        if (msg.epoch) this.epoch = msg.epoch;
        this.resumable = !!this.last;
        this._setLive(msg.at);
        return;
      case 'reset':
        this.resumable = false;
        this.last = null;
        this.live = false;
        this.emit('reset', msg.reason);
        this._updateStatus();
        return;
      case 'phase':
        this._setPhase(msg.phase);
        return;
      case 'error':
        this.lastError = msg;
        this.emit('error', msg);
        return;
      case 'message':
        this.emit('message', msg);
        return;
      default:
    }
  }

  _snapshotDisplay(keys) {
    const m = new Map();
    for (const k of keys) if (!m.has(k)) m.set(k, this._display(k));
    return m;
  }

  _applyOps(ops, meta) {
    if (!ops.length) return;
    let changed = false;
    for (const op of ops) {
      const keys = op.prevKey != null ? [op.prevKey, op.key] : [op.key];
      const before = this._snapshotDisplay(keys);
      this.server.applyOp(op);
      // the server's change for a row this tab wrote: the write has landed
      for (const k of keys) if (this.settling.delete(k)) this._updateRowStatus(k);
      for (const [k, b] of before) changed = this._emitDisplay(k, b, { ...meta, key: k, event: op.event }) || changed;
    }
    if (changed) this.emit('change', this);
  }

  _setLive(at) {
    this.live = true;
    this.fromCache = false;
    this.emit('live', { at, last: this.last, epoch: this.epoch });
    this._updateStatus();
  }

  _setPhase(phase) {
    if (this.phase === phase) return;
    this.phase = phase;
    if (phase !== 'live') this.live = false;
    this.emit('phase', phase);
    this._updateStatus();
  }

  /** Shows cached rows (persisted by an earlier session) until the server's arrive. */
  _loadCache(saved) {
    if (!saved || this.server.size || this.live) return;
    const before = this._snapshotDisplay(saved.rows.map((r) => r[0]));
    this.server = RowSet.fromDump(this.keyCols, saved.rows);
    this.last = saved.last;
    this.epoch = saved.epoch;
    this.resumable = !!saved.resumable;
    this.fromCache = true;
    for (const [k, b] of before) this._emitDisplay(k, b, { key: k, source: 'cache' });
    this.emit('cache', { rows: saved.rows.length, last: saved.last, savedAt: saved.savedAt });
    this.emit('change', this);
  }

  /** The seed for an engine taking over this subscription (resume point and rows). */
  _seed() {
    return { rows: this.server.dump(), last: this.last, epoch: this.epoch, resumable: this.resumable };
  }

  // a queued write changed state (queued, in flight, retried, written, dropped, conflict)
  _writeChanged(e, before) {
    if (e.status === 'written') {
      if (!this.settling.has(e.key)) this.settling.set(e.key, []);
      this.settling.get(e.key).push(e);
      const k = e.key;
      setTimeout(() => {
        const list = this.settling.get(k);
        if (!list) return;
        const b = this._display(k);
        const rest = list.filter((x) => x !== e);
        if (rest.length) this.settling.set(k, rest); else this.settling.delete(k);
        this._emitDisplay(k, b, { key: k, source: 'local' });
        this._updateRowStatus(k);
      }, this.client.settleMs);
    }
    if (before !== undefined) {
      if (this._emitDisplay(e.key, before, { key: e.key, source: 'local', write: e.id })) this.emit('change', this);
    }
    this._updateRowStatus(e.key);
  }

  _updateRowStatus(key) {
    let st = 'synced';
    for (const e of this._entriesFor(key)) {
      if (e.status === 'conflict') { st = 'conflict'; break; }
      st = 'pending';
    }
    const prev = this._rowStatus.get(key) ?? 'synced';
    if (st === 'synced') this._rowStatus.delete(key); else this._rowStatus.set(key, st);
    if (prev !== st) this.emit('rowstatus', { key, status: st, row: this._display(key) ?? null });
    this._updateStatus();
  }

  _updateStatus() {
    let st = this.live ? 'synced' : 'pending';
    for (const s of this._rowStatus.values()) {
      if (s === 'conflict') { st = 'conflict'; break; }
      st = 'pending';
    }
    if (st !== this._status) {
      this._status = st;
      this.emit('status', st);
    }
  }
}
