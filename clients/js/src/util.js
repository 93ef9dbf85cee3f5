// Small shared helpers: an event emitter, backoff with jitter, canonical JSON.

export class Emitter {
  constructor() { this._handlers = new Map(); }
  /** Adds a handler; returns a function that removes it. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) { this._handlers.get(type)?.delete(fn); }
  once(type, fn) {
    const off = this.on(type, (...a) => { off(); fn(...a); });
    return off;
  }
  emit(type, ...args) {
    const hs = this._handlers.get(type);
    if (!hs) return;
    for (const fn of [...hs]) {
      try { fn(...args); } catch (e) { reportError(e); }
    }
  }
}

export function reportError(e) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
  else console.error(e);
}

/**
 * Exponential backoff with full jitter: attempt n (0-based) waits a random
 * time in [base * 2^n / 2, base * 2^n], capped at max.
 */
export function backoffDelay(attempt, { base = 250, max = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * ceiling / 2);
}

/** JSON with object keys sorted, so equal values give equal strings. */
export function canonicalJson(v) {
  if (v === undefined) return 'null';
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(canonicalJson).join(',') + ']';
  return '{' + Object.keys(v).sort().filter((k) => v[k] !== undefined)
    .map((k) => JSON.stringify(k) + ':' + canonicalJson(v[k])).join(',') + '}';
}

/** The identity of a server subscription: its name and parameters. */
export function subscriptionKey(name, params) {
  return name + ' ' + canonicalJson(params ?? {});
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** Seconds since the epoch of a JWT's exp claim, or null. */
export function jwtExp(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = typeof atob === 'function'
      ? atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))
      : Buffer.from(b64, 'base64').toString('utf8');
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp : null;
  } catch {
    return null;
  }
}

export function deepEqual(a, b) {
  return canonicalJson(a) === canonicalJson(b);
}
