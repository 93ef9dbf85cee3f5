// RtsubClient: subscriptions as live views, one server connection per
// browser (shared by the tabs of an origin), persistence and a write queue.
//
// Tabs: every tab holds its own views. One tab — the leader, elected with a
// Web Lock — runs the Engine (the server connection); it relays the
// engine's messages to the other tabs over a BroadcastChannel and opens one
// server subscription per distinct (name, params), whichever tabs want it.
// When the leader closes, the lock passes to a waiting tab, which becomes
// leader, seeds the engine with its own views (rows and resume point) and
// resumes. Outside browsers (Node), or with `shared: false`, or without Web
// Locks (insecure origins), a client is its own leader.

import { Emitter, randomId, reportError, subscriptionKey } from './util.js';
import { Engine } from './engine.js';
import { Subscription } from './view.js';
import { WriteQueue } from './writes.js';
import { MemoryStore, IndexedDbStore } from './store.js';

const hasWindow = typeof window !== 'undefined' && typeof window.addEventListener === 'function';

export class RtsubClient extends Emitter {
  constructor(options) {
    super();
    if (!options?.url) throw new Error('rtsub: options.url is required');
    this.options = options;
    this.transport = options.transport ?? 'websocket';
    this.format = this.transport === 'sse' ? 'json' : (options.format ?? 'json');
    this.tabId = randomId();
    this.settleMs = options.settleMs ?? 3000;
    this.channelName = `rtsub:${options.channel ?? `${options.url}|${this.transport}|${this.format}`}`;
    const canShare = typeof BroadcastChannel === 'function' && !!globalThis.navigator?.locks;
    this.shared = (options.shared ?? hasWindow) && canShare;
    if (options.store) this.store = options.store;
    else if (options.persist === false) this.store = null;
    else if (typeof indexedDB !== 'undefined' && hasWindow) this.store = new IndexedDbStore(options.database ?? 'rtsub');
    else this.store = new MemoryStore();
    this.views = new Map();          // subKey -> Set(Subscription)
    this.engine = null;
    this.isLeader = false;
    this.leaderId = null;
    this.status = 'idle';
    this.closed = false;
    this.online = hasWindow && typeof navigator !== 'undefined' && navigator.onLine === false ? false : true;
    this.wants = new Map();          // (leader) subKey -> Set(tab id)
    this.specs = new Map();          // (leader) subKey -> spec
    this.ensuring = new Map();       // (leader) subKey -> Promise
    this._gcRuns = 0;
    this.writes = new WriteQueue({
      write: async (m) => {
        if (typeof options.write !== 'function') throw new Error('rtsub: no options.write function to send writes with');
        return options.write(m);
      },
      store: this.store, owner: this.tabId, backoff: options.writeBackoff,
      viewOf: (k) => this._firstView(k),
    });
    this._before = new Map();
    this.writes.on('beforefinish', (e) => this._captureBefore(e));
    this.writes.on('change', (e) => this._writeChanged(e));
    this.writes.on('conflict', (e, info) => this.emit('conflict', e, info));
    this.writes.setOnline(this.online);
    this._listeners = [];
    if (hasWindow) {
      const on = (target, ev, fn) => { target.addEventListener(ev, fn); this._listeners.push([target, ev, fn]); };
      on(window, 'online', () => this._setOnline(true));
      on(window, 'offline', () => this._setOnline(false));
      on(window, 'pagehide', () => this._bye());
      // a hidden leader's reconnect timer may be throttled: visible tabs
      // ask it to reconnect once the reconnect is due
      this._kicker = setInterval(() => {
        if (this.status === 'connecting' && document.visibilityState === 'visible') {
          if (this.isLeader) this.engine?.kick(); else this._post({ t: 'kick' });
        }
      }, 1000);
    }
    this._start();
    this._adoptWrites();
  }

  // ------------------------------------------------------------ public

  /**
   * subscribe(name, params, handlers and options) -> Subscription
   * options: key (['id']), orderBy, version (column), conflict ('lww' |
   * 'merge' | 'manual'), onConflict; handlers onInsert, onUpdate, onDelete,
   * onLive, onReset, onError, onStatus, onRowStatus, onChange.
   */
  subscribe(name, params = {}, options = {}) {
    if (this.closed) throw new Error('rtsub: client closed');
    const view = new Subscription(this, name, params, options);
    view.on('live', () => this.writes._pump());
    let set = this.views.get(view.key);
    const first = !set;
    if (!set) this.views.set(view.key, (set = new Set()));
    set.add(view);
    const spec = { key: view.key, name, params: view.params, keyCols: view.keyCols };
    (async () => {
      // the last session's rows at once, until the server's arrive
      if (this.store) {
        try {
          const saved = await this.store.getSubscription(view.key);
          const other = [...set].find((v) => v !== view && (v.live || v.server.size));
          if (other) view._receive({ t: 'state', state: { rows: other.server.dump(), last: other.last, epoch: other.epoch, live: other.live, phase: other.phase } });
          else if (saved) view._loadCache(saved);
        } catch (e) { reportError(e); }
      }
      if (view.closed) return;
      if (first || !this.isLeader) this._want(spec);
      else {
        const st = this.engine?.stateOf(view.key);
        if (st) view._receive({ t: 'state', state: st });
      }
    })();
    return view;
  }

  /**
   * Queues a write that is not tied to a view row: m = {op, data, priority, ...};
   * the write function receives it. Resolves when written or dropped.
   */
  write(m) { return this._queueWrite({ op: m.op ?? 'custom', ...m }); }

  /** Resolves a parked conflict. */
  resolveConflict(id, value) { return this.writes.resolve(id, value); }

  /** Tells the client whether the network is up (browsers: from online/offline events). */
  setOnline(online) { this._setOnline(!!online); }

  /** Drops the server connection once, as a network failure would (it reconnects and resumes). */
  reconnect() {
    if (this.isLeader) this.engine?.drop();
    else this._post({ t: 'drop' });
  }

  /** Introspection for tests and UIs. */
  info() {
    return {
      tabId: this.tabId, isLeader: this.isLeader, leaderId: this.leaderId, shared: this.shared,
      status: this.status, online: this.online, serverSubscriptions: this.engine ? this.engine.subs.size : null,
      stats: this.engine ? { ...this.engine.stats } : null, queued: this.writes.size,
    };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this._bye();
    for (const [t, ev, fn] of this._listeners) t.removeEventListener(ev, fn);
    this.engine?.stop();
    this.engine = null;
    this._releaseLeader?.();
    this._releaseTab?.();
    this.bc?.close();
    clearInterval(this._gc);
    clearInterval(this._kicker);
    this._setStatus('closed');
  }

  // ------------------------------------------------------------ tabs

  _start() {
    if (!this.shared) {
      this._becomeLeader();
      return;
    }
    this.bc = new BroadcastChannel(this.channelName);
    this.bc.onmessage = (ev) => this._onChannel(ev.data);
    const locks = navigator.locks;
    // this tab's own lock: the leader sees which tabs are alive
    locks.request(`${this.channelName}:tab:${this.tabId}`, () => new Promise((r) => { this._releaseTab = r; }));
    locks.request(`${this.channelName}:leader`, () => {
      if (this.closed) return undefined;
      this._becomeLeader();
      return new Promise((r) => { this._releaseLeader = r; });
    });
    this._post({ t: 'hello' });
  }

  /** Takes over persisted writes whose tab is gone (closed, or the last session's). */
  async _adoptWrites() {
    if (!this.store) return;
    const run = async () => {
      let alive = new Set([this.tabId]);
      if (this.shared) {
        try { alive = new Set((await navigator.locks.query()).held.map((l) => l.name.split(':tab:')[1]).filter(Boolean)); } catch { /* none */ }
      }
      const orphans = (await this.store.getWrites()).filter((w) => !alive.has(w.owner) || w.owner === this.tabId);
      if (orphans.length) this.writes.adopt(orphans);
    };
    try {
      if (this.shared) await navigator.locks.request(`${this.channelName}:adopt`, run);
      else await run();
    } catch (e) { reportError(e); }
  }

  _post(m) {
    if (!this.bc || this.closed) return;
    try { this.bc.postMessage({ ...m, from: this.tabId }); } catch (e) { reportError(e); }
  }

  _becomeLeader() {
    this.isLeader = true;
    this.leaderId = this.tabId;
    this.leaderSince = Date.now();
    const o = this.options;
    this.engine = new Engine({
      url: o.url, token: o.token, transport: this.transport, format: this.format,
      WebSocket: o.WebSocket, fetch: o.fetch, backoff: o.backoff, store: this.store,
      subscribeOptions: o.subscribeOptions, refreshMarginMs: o.refreshMarginMs,
    });
    this.engine.on('sub', (key, msg) => {
      // the other tabs first: they apply it while this one does
      if (this.shared) this._post({ t: 'sub', key, msg });
      this._deliver(key, msg);
    });
    this.engine.on('status', (s) => {
      this._setStatus(s);
      if (this.shared) this._post({ t: 'status', status: s });
    });
    this.engine.on('error', (e) => this.emit('error', e));
    this.engine.on('welcome', (w) => this.emit('welcome', w));
    if (!this.online) this.engine.setOnline(false);
    // this tab's own subscriptions, seeded from its views
    for (const [key, set] of this.views) {
      const v = [...set][0];
      this._leaderWant(this.tabId, { key, name: v.name, params: v.params, keyCols: v.keyCols });
    }
    if (this.shared) {
      this._post({ t: 'leader', status: this.status });
      this._gc = setInterval(() => this._collectTabs(), 2000);
    }
    this.emit('leader', { tabId: this.tabId });
  }

  _want(spec) {
    if (this.isLeader) this._leaderWant(this.tabId, spec);
    else this._post({ t: 'want', specs: [spec] });
  }

  async _leaderWant(tab, spec) {
    let wanters = this.wants.get(spec.key);
    if (!wanters) this.wants.set(spec.key, (wanters = new Set()));
    wanters.add(tab);
    if (!this.specs.has(spec.key)) {
      this.specs.set(spec.key, spec);
      const p = (async () => {
        const own = this._firstView(spec.key);
        let seed = own && (own.resumable || own.server.size) ? own._seed() : null;
        if (!seed?.resumable && this.store) {
          try {
            const saved = await this.store.getSubscription(spec.key);
            if (saved && (saved.resumable || !seed)) seed = saved;
          } catch (e) { reportError(e); }
        }
        if (this.engine && this.wants.get(spec.key)?.size) this.engine.ensure(spec, seed);
      })();
      this.ensuring.set(spec.key, p);
    }
    await this.ensuring.get(spec.key);
    if (tab !== this.tabId && this.engine?.subs.has(spec.key)) {
      this._post({ t: 'state', to: tab, key: spec.key, state: this.engine.stateOf(spec.key), status: this.status });
    }
  }

  _leaderDrop(tab, key) {
    const wanters = this.wants.get(key);
    if (!wanters || !wanters.delete(tab) || wanters.size) return;
    this.wants.delete(key);
    this.specs.delete(key);
    this.ensuring.delete(key);
    this.engine?.release(key);
  }

  async _collectTabs() {
    let held;
    try { held = new Set((await navigator.locks.query()).held.map((l) => l.name)); } catch { return; }
    // writes queued by tabs that are gone
    if (this.store && ++this._gcRuns % 5 === 0) this._adoptWrites();
    for (const [key, wanters] of [...this.wants]) {
      for (const tab of [...wanters]) {
        if (tab !== this.tabId && !held.has(`${this.channelName}:tab:${tab}`)) this._leaderDrop(tab, key);
      }
    }
  }

  _onChannel(m) {
    if (!m || m.from === this.tabId || this.closed) return;
    switch (m.t) {
      case 'hello':
        if (this.isLeader) this._post({ t: 'leader', status: this.status });
        return;
      case 'leader':
        if (this.isLeader) return;
        if (m.status) this._setStatus(m.status);
        if (this.leaderId !== m.from) {
          this.leaderId = m.from;
          this.emit('leaderchange', { leaderId: m.from });
        }
        // (re)announce what this tab wants; the leader answers with states
        if (this.views.size) {
          this._post({ t: 'want', specs: [...this.views].map(([key, set]) => {
            const v = [...set][0];
            return { key, name: v.name, params: v.params, keyCols: v.keyCols };
          }) });
        }
        return;
      case 'want':
        if (this.isLeader) for (const spec of m.specs) this._leaderWant(m.from, spec);
        return;
      case 'drop':
        if (this.isLeader) {
          if (m.key) this._leaderDrop(m.from, m.key);
          else this.engine?.drop();
        }
        return;
      case 'kick':
        if (this.isLeader) this.engine?.kick();
        return;
      case 'bye':
        if (this.isLeader) for (const key of [...this.wants.keys()]) this._leaderDrop(m.from, key);
        return;
      case 'sub':
        if (!this.isLeader) this._deliver(m.key, m.msg);
        return;
      case 'state':
        if (!this.isLeader && m.to === this.tabId) {
          if (m.status) this._setStatus(m.status);
          this._deliver(m.key, { t: 'state', state: m.state });
        }
        return;
      case 'status':
        if (!this.isLeader) this._setStatus(m.status);
        return;
      default:
    }
  }

  _bye() {
    if (this.shared && !this.isLeader) this._post({ t: 'bye' });
  }

  // ------------------------------------------------------------ views

  _subKey(name, params) { return subscriptionKey(name, params); }

  _firstView(key) {
    const set = this.views.get(key);
    return set ? set.values().next().value ?? null : null;
  }

  _deliver(key, msg) {
    const set = this.views.get(key);
    if (!set) return;
    for (const v of set) {
      try { v._receive(msg); } catch (e) { reportError(e); }
    }
  }

  _unsubscribe(view) {
    const set = this.views.get(view.key);
    if (!set) return;
    set.delete(view);
    if (set.size) return;
    this.views.delete(view.key);
    if (this.isLeader) this._leaderDrop(this.tabId, view.key);
    else this._post({ t: 'drop', key: view.key });
  }

  _setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.emit('status', s);
  }

  _setOnline(online) {
    if (this.online === online) return;
    this.online = online;
    this.emit(online ? 'online' : 'offline');
    this.engine?.setOnline(online);
    this.writes.setOnline(online);
  }

  // ------------------------------------------------------------ writes

  _queueWrite(m) {
    const views = m.subKey ? [...(this.views.get(m.subKey) ?? [])] : [];
    const before = views.map((v) => [v, v._display(m.key)]);
    this._adding = true;
    let entry, done;
    try { ({ entry, done } = this.writes.add(m)); } finally { this._adding = false; }
    for (const [v, b] of before) v._writeChanged(entry, b);
    const p = done;
    p.id = entry.id;
    return p;
  }

  _captureBefore(e) {
    if (!e.subKey) return;
    this._before.set(e.id, [...(this.views.get(e.subKey) ?? [])].map((v) => [v, v._display(e.key)]));
  }

  _writeChanged(e) {
    if (!e.subKey) return;
    const before = this._before.get(e.id);
    this._before.delete(e.id);
    if (before) { for (const [v, b] of before) v._writeChanged(e, b); return; }
    if (this._adding) return;     // just queued: _queueWrite tells the views itself
    for (const v of this.views.get(e.subKey) ?? []) v._writeChanged(e, undefined);
  }
}

export function createClient(options) {
  return new RtsubClient(options);
}
