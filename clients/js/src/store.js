// Persistence of subscriptions (rows, resume point) and queued writes.
// IndexedDbStore in browsers; MemoryStore elsewhere (or pass your own object
// with the same five async methods).

export class MemoryStore {
  constructor() { this.subs = new Map(); this.writes = new Map(); }
  async getSubscription(key) { return structuredClone(this.subs.get(key)) ?? null; }
  async putSubscription(key, value) { this.subs.set(key, structuredClone(value)); }
  async deleteSubscription(key) { this.subs.delete(key); }
  async getWrites() { return [...this.writes.values()].map((w) => structuredClone(w)); }
  async putWrite(w) { this.writes.set(w.id, structuredClone(w)); }
  async deleteWrite(id) { this.writes.delete(id); }
  close() {}
}

const req = (r) => new Promise((resolve, reject) => {
  r.onsuccess = () => resolve(r.result);
  r.onerror = () => reject(r.error);
});

/** IndexedDB database `name` with object stores `subscriptions` and `writes`. */
export class IndexedDbStore {
  constructor(name = 'rtsub', indexedDB = globalThis.indexedDB) {
    this.name = name;
    this.idb = indexedDB;
    this.db = null;
  }

  async _open() {
    if (!this.db) {
      this.db = new Promise((resolve, reject) => {
        const r = this.idb.open(this.name, 1);
        r.onupgradeneeded = () => {
          const db = r.result;
          if (!db.objectStoreNames.contains('subscriptions')) db.createObjectStore('subscriptions');
          if (!db.objectStoreNames.contains('writes')) db.createObjectStore('writes', { keyPath: 'id' });
        };
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
        r.onblocked = () => reject(new Error('rtsub: IndexedDB open blocked'));
      });
    }
    return this.db;
  }

  async _tx(storeName, mode, fn) {
    const db = await this._open();
    const tx = db.transaction(storeName, mode);
    const result = await fn(tx.objectStore(storeName));
    if (mode === 'readwrite') {
      await new Promise((resolve, reject) => {
        tx.oncomplete = resolve;
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error);
      });
    }
    return result;
  }

  getSubscription(key) { return this._tx('subscriptions', 'readonly', (s) => req(s.get(key))).then((v) => v ?? null); }
  putSubscription(key, value) { return this._tx('subscriptions', 'readwrite', (s) => req(s.put(value, key))); }
  deleteSubscription(key) { return this._tx('subscriptions', 'readwrite', (s) => req(s.delete(key))); }
  getWrites() { return this._tx('writes', 'readonly', (s) => req(s.getAll())); }
  putWrite(w) { return this._tx('writes', 'readwrite', (s) => req(s.put(w))); }
  deleteWrite(id) { return this._tx('writes', 'readwrite', (s) => req(s.delete(id))); }
  close() { this.db?.then((d) => d.close()).catch(() => {}); this.db = null; }
}
