// WriteQueue: writes made through a view (insert / update / delete) or with
// client.write(), handed to the application's write function — at once when
// online, queued (and persisted) when offline or when the function fails,
// and replayed with exponential backoff and jitter.
//
// Replay order: by priority (critical, high, normal, low), then by age; the
// writes to one row always keep their own order (a write waits for the
// earlier writes to the same row, which go with the highest priority of the
// writes to that row).
//
// Writes to the rows of a view are replayed once the view is live again
// (caught up after a reconnect). Conflicts are detected by row version: a write remembers the version of
// the row it was made against (`baseVersion`: the value of the view's
// `version` column, or by default the event id of the last change the
// server sent for the row). If, when the write is replayed, the server's
// row has another version, the view's conflict policy decides:
//   'lww'    last write wins: an update is sent as the whole row it was made
//            on plus its changes (overwriting the server's other changes);
//   'merge'  field-level merge: only the fields the write changed are sent;
//            a field changed both locally and on the server (to different
//            values) goes to onConflict if given, else the local value wins;
//   'manual' onConflict({local, base, server, write}) returns the patch to
//            send, null to drop the write, or undefined to park it as a
//            conflict until write.resolve(value) / queue.resolve(id, value).
// A write function may also report a conflict itself by throwing an error
// with `conflict: true` (and optionally `server`: the server's row).

import { Emitter, backoffDelay, randomId, reportError } from './util.js';

export const PRIORITIES = ['critical', 'high', 'normal', 'low'];
const RANK = Object.fromEntries(PRIORITIES.map((p, i) => [p, i]));

export class WriteQueue extends Emitter {
  /**
   * opts: write (async function(mutation)), store, owner (tab id),
   * viewOf(subKey) -> view or null, backoff {base, max}, now()
   */
  constructor(opts) {
    super();
    this.opts = opts;
    this.items = [];
    this.seq = 0;
    this.online = true;
    this.running = false;
    this.timer = null;
    this.waiters = new Map();     // id -> {resolve, reject}
  }

  get size() { return this.items.length; }
  list() { return [...this.items]; }

  /** Queues a mutation; resolves with {status: 'written', result} or {status: 'dropped'}. */
  add(m) {
    const priority = m.priority ?? 'normal';
    if (!(priority in RANK)) throw new Error(`rtsub: unknown priority ${priority} (one of ${PRIORITIES.join(', ')})`);
    const entry = {
      id: m.id ?? randomId(), seq: Date.now() * 1000 + (this.seq++ % 1000), priority,
      op: m.op, subKey: m.subKey ?? null, subscription: m.subscription ?? null, params: m.params ?? null,
      key: m.key ?? null, row: m.row ?? null, patch: m.patch ?? null, base: m.base ?? null,
      baseVersion: m.baseVersion ?? null, checkVersion: m.checkVersion ?? false,
      policy: m.policy ?? 'lww', data: m.data, status: 'pending', attempts: 0, notBefore: 0,
      owner: this.opts.owner, createdAt: Date.now(), lastError: null,
    };
    this.items.push(entry);
    this._persist(entry);
    const p = new Promise((resolve, reject) => this.waiters.set(entry.id, { resolve, reject }));
    this.emit('change', entry);
    this._pump();
    return { entry, done: p };
  }

  /** Takes over persisted entries (of a closed tab, or of the last session). */
  adopt(entries) {
    for (const e of entries) {
      if (this.items.some((x) => x.id === e.id)) continue;
      e.owner = this.opts.owner;
      if (e.status === 'inflight') e.status = 'pending';
      this.items.push(e);
      this._persist(e);
      this.emit('change', e);
    }
    this._pump();
  }

  setOnline(online) {
    this.online = online;
    if (online) {
      for (const e of this.items) e.notBefore = 0;
      this._pump();
    }
  }

  /** Settles a parked conflict: value = the patch/row to write, or null to drop. */
  resolve(id, value) {
    const e = this.items.find((x) => x.id === id);
    if (!e || e.status !== 'conflict') return false;
    if (value === null) { this._finish(e, { status: 'dropped' }); return true; }
    if (e.op === 'insert') e.row = value; else e.patch = value;
    e.checkVersion = false;
    e.status = 'pending';
    this._persist(e);
    this.emit('change', e);
    this._pump();
    return true;
  }

  // the first write of each row (and every write not tied to a row), each
  // with the highest priority of the writes to its row, in replay order
  _eligible() {
    const head = new Map();
    const rank = new Map();
    const out = [];
    for (const e of [...this.items].sort((a, b) => a.seq - b.seq)) {
      const rk = e.key != null ? e.subKey + '\u0000' + e.key : null;
      if (!rk) { if (e.status === 'pending') out.push([e, RANK[e.priority]]); continue; }
      // a row's writes wait until its view has caught up with the server,
      // so that their version check sees the server's latest row
      if (e.subKey && this.opts.viewOf?.(e.subKey)?.live === false) continue;
      if (!head.has(rk)) head.set(rk, e);     // an earlier write to this row goes first
      rank.set(rk, Math.min(rank.get(rk) ?? 9, RANK[e.priority]));
    }
    for (const [rk, e] of head) if (e.status === 'pending') out.push([e, rank.get(rk)]);
    return out.sort((a, b) => a[1] - b[1] || a[0].seq - b[0].seq).map((x) => x[0]);
  }

  _pump() {
    if (this.running || !this.online) return;
    clearTimeout(this.timer);
    const now = Date.now();
    const ready = this._eligible();
    const next = ready.find((e) => e.notBefore <= now);
    if (!next) {
      const soonest = Math.min(...ready.map((e) => e.notBefore));
      if (Number.isFinite(soonest)) this.timer = setTimeout(() => this._pump(), soonest - now);
      return;
    }
    this.running = true;
    this._run(next).catch(reportError).finally(() => { this.running = false; this._pump(); });
  }

  async _run(e) {
    const view = e.subKey ? this.opts.viewOf?.(e.subKey) : null;
    let patch = e.patch;
    let row = e.row;
    if (e.checkVersion && view && (e.op === 'update' || e.op === 'delete')) {
      const current = view.serverVersion(e.key);
      if (current !== e.baseVersion) {
        const res = await this._conflict(e, view, view.serverRow(e.key));
        if (res.drop) { this._finish(e, { status: 'dropped', conflict: true }); return; }
        if (res.park) return;
        patch = res.patch;
      }
    }
    e.status = 'inflight';
    this.emit('change', e);
    const mutation = this._mutation(e, row, patch);
    try {
      const result = await this.opts.write(mutation);
      // later writes to the same row were made on top of this one
      for (const x of this.items) if (x !== e && x.subKey === e.subKey && x.key === e.key) x.checkVersion = false;
      this._finish(e, { status: 'written', result });
    } catch (err) {
      if (err?.conflict && view) {
        e.status = 'pending';
        const res = await this._conflict(e, view, err.server ?? view.serverRow(e.key));
        if (res.drop) { this._finish(e, { status: 'dropped', conflict: true }); return; }
        if (res.park) return;
        e.patch = res.patch;
        e.checkVersion = false;
        this._persist(e);
        this.emit('change', e);
        return;
      }
      e.status = 'pending';
      e.attempts++;
      e.lastError = String(err?.message ?? err);
      e.notBefore = Date.now() + backoffDelay(e.attempts - 1, this.opts.backoff ?? { base: 500, max: 30000 });
      this._persist(e);
      this.emit('change', e);
      this.emit('retry', e, err);
    }
  }

  _mutation(e, row, patch) {
    return {
      id: e.id, op: e.op, subscription: e.subscription, params: e.params, key: e.key,
      keyValues: e.key != null ? JSON.parse(e.key) : null, row, patch, base: e.base,
      baseVersion: e.baseVersion, priority: e.priority, attempt: e.attempts, data: e.data,
    };
  }

  // -> {patch} to send, {drop: true}, or {park: true}
  async _conflict(e, view, server) {
    const policy = e.policy ?? 'lww';
    const info = { local: e.op === 'insert' ? e.row : e.patch, base: e.base, server, write: this._mutation(e, e.row, e.patch), op: e.op };
    this.emit('conflict', e, info);
    const manual = async () => {
      const cb = view.onConflict;
      let v;
      try { v = cb ? await cb(info) : undefined; } catch (err) { reportError(err); v = undefined; }
      if (v === null) return { drop: true };
      if (v === undefined) {
        e.status = 'conflict';
        this._persist(e);
        this.emit('change', e);
        return { park: true };
      }
      return { patch: v };
    };
    if (policy === 'manual') return manual();
    if (policy === 'merge' && e.op === 'update' && server && e.base) {
      const clash = Object.keys(e.patch ?? {}).filter((f) =>
        !same(server[f], e.base[f]) && !same(server[f], e.patch[f]));
      if (clash.length === 0) return { patch: e.patch };
      if (view.onConflict) return manual();
      return { patch: e.patch };                 // the local value wins the clashing fields
    }
    // last write wins: the row as this write saw it, with its changes
    if (e.op === 'update' && e.base) return { patch: { ...e.base, ...e.patch } };
    return { patch: e.patch };
  }

  _finish(e, outcome) {
    this.emit('beforefinish', e);
    this.items = this.items.filter((x) => x !== e);
    e.status = outcome.status;
    this.opts.store?.deleteWrite(e.id).catch(reportError);
    this.emit('change', e);
    this.emit(outcome.status, e, outcome.result);
    const w = this.waiters.get(e.id);
    this.waiters.delete(e.id);
    w?.resolve(outcome);
  }

  _persist(e) {
    if (!this.opts.store) return;
    const { ...copy } = e;
    this.opts.store.putWrite(copy).catch(reportError);
  }
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}
