// test/node/_exact.mjs — helpers shared by the "exactness" tests
// (snapshot.test.mjs, resume.test.mjs, backpressure.test.mjs and the TAP
// test t/003_resume_crash.pl's node script): real clients (ws,
// @msgpack/msgpack, eventsource, fetch for raw SSE), tokens (jose), event
// id arithmetic, a seeded random generator, writer loops and settings.
//
// Not a test file (test/run runs *.test.mjs only).
import assert from 'node:assert/strict';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { encode, decode } from '@msgpack/msgpack';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const EVENT_ID = /^[0-9A-F]+\/[0-9A-F]+:\d+$/;
export const EPOCH = /^[0-9a-f]{16}$/;
export const ROLE = 'exact_user';

// ------------------------------------------------------------------ random
// mulberry32: a small seeded generator, so that a failing run can be
// repeated with RTSUB_SEED=<seed>
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    seed,
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),   // lo..hi inclusive
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    // log-uniform integer in lo..hi: small values as likely as large ones
    logInt: (lo, hi) => Math.min(hi, Math.floor(Math.exp(Math.log(lo) + next() * (Math.log(hi + 1) - Math.log(lo))))),
  };
}

export function seedFromEnv(name = 'RTSUB_SEED') {
  const s = process.env[name] ? Number(process.env[name]) : Math.floor(Math.random() * 2 ** 31);
  return s;
}

// ------------------------------------------------------------------ event ids
// "<lsn>:<pos>" as one BigInt: lsn * 2^32 + pos (compare by LSN, then position)
export function eid(s) {
  const m = /^([0-9A-F]+)\/([0-9A-F]+):(\d+)$/.exec(s);
  assert.ok(m, `an event id: ${JSON.stringify(s)}`);
  return ((BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`)) * 4294967296n + BigInt(m[3]);
}
export const lsnOf = (s) => eid(s) / 4294967296n;
export const maxId = (a, b) => (a === null ? b : b === null ? a : eid(a) >= eid(b) ? a : b);

// ------------------------------------------------------------------ polling
export async function until(fn, what, timeoutMs = 10000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(everyMs);
  }
}

// ------------------------------------------------------------------ database
export async function connectDb(opts = {}) {
  const db = new pg.Client({ database: process.env.PGDATABASE || 'postgres', ...opts });
  await db.connect();
  db.on('error', () => {});   // a terminated connection is noticed by the next query
  return db;
}

// the rtsub server's port, base URL and JWT secret; extension + role ready
export async function serverInfo(db) {
  const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  assert.ok(secret, 'rtsub.jwt_secret is set');
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(20000) AS up')).rows[0].up, true,
    'the rtsub server runs');
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}') THEN CREATE ROLE ${ROLE}; END IF;
    END $$`);
  return { port, secret, base: `http://127.0.0.1:${port}` };
}

// ALTER SYSTEM SET / RESET (null) and reload; waits until the server's
// worker has had time to re-read them
export async function settings(db, values, waitMs = 500) {
  for (const [k, v] of Object.entries(values)) {
    if (v === null) await db.query(`ALTER SYSTEM RESET ${k}`);
    else await db.query(`ALTER SYSTEM SET ${k} = '${v}'`);
  }
  await db.query('SELECT pg_reload_conf()');
  await sleep(waitMs);
}

export async function metric(base, name) {
  const body = await (await fetch(`${base}/metrics`)).text();
  const m = body.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} present`);
  return Number(m[1]);
}

// ------------------------------------------------------------------ tokens
export async function token(secret, claims = {}) {
  return new jose.SignJWT({ role: ROLE, ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime('2h')
    .sign(new TextEncoder().encode(secret));
}

// ------------------------------------------------------------------ clients
/*
 * Every client records every protocol message it receives, in order, in
 * `log` (SSE events as their JSON data, with `sseId` = the `id:` field),
 * and offers:
 *   next(pred, timeoutMs, what)  the first message not yet taken by next()
 *                                that matches pred (taken from `pending`)
 *   wait(pred, ...)              a message anywhere in the log (not taken)
 *   closed                       a promise of { code, reason } (WS) / {} (SSE)
 */
function recorder() {
  const log = [];
  const pending = [];
  const waiters = [];
  const wake = () => { for (const w of waiters.splice(0)) w(); };
  const rec = {
    log,
    pending,
    isClosed: false,
    closeInfo: null,
    push(m) { log.push(m); pending.push(m); wake(); },
    wake,
    async next(pred, timeoutMs = 10000, what = 'a message') {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = pending.findIndex(pred);
        if (i >= 0) return pending.splice(i, 1)[0];
        const left = end - Date.now();
        if (left <= 0 || (rec.isClosed && rec.failOnClose)) {
          assert.fail(`${left <= 0 ? 'timed out' : 'connection closed'} waiting for ${what}; ` +
            `close: ${JSON.stringify(rec.closeInfo)}; last messages: ${short(log.slice(-8))}`);
        }
        await new Promise((r) => { waiters.push(r); setTimeout(r, Math.min(left, 1000)); });
      }
    },
    async wait(pred, timeoutMs = 10000, what = 'a message') {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const m = log.find(pred);
        if (m) return m;
        const left = end - Date.now();
        if (left <= 0) {
          assert.fail(`timed out waiting for ${what}; close: ${JSON.stringify(rec.closeInfo)}; ` +
            `last messages: ${short(log.slice(-8))}`);
        }
        await new Promise((r) => { waiters.push(r); setTimeout(r, Math.min(left, 1000)); });
      }
    },
  };
  return rec;
}

export function short(msgs) {
  const s = JSON.stringify(msgs, (k, v) => (typeof v === 'string' && v.length > 80 ? `${v.slice(0, 40)}...(${v.length})` : v)) ?? String(msgs);
  return s.length > 3000 ? `${s.slice(0, 3000)}...` : s;
}

/*
 * A WebSocket client (format 'json' or 'msgpack'); resolves after welcome.
 * pause()/resume() stop and restart reading the socket (a slow consumer).
 */
export async function wsClient({ port, tok, format = 'json', maxPayload, deflate } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, `rtsub.v1.${format}`, {
    headers: { Authorization: `Bearer ${tok}` },
    // these tests are about what arrives, not compression: without
    // permessage-deflate unless asked (deflate: true, or RTSUB_WS_DEFLATE=1
    // for every client); snapshot.test.mjs has a test with it
    perMessageDeflate: deflate ?? process.env.RTSUB_WS_DEFLATE === '1',
    ...(maxPayload ? { maxPayload } : {}),
  });
  const rec = recorder();
  rec.kind = `ws-${format}`;
  rec.failOnClose = true;
  rec.ws = ws;
  rec.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      rec.isClosed = true;
      rec.closeInfo = { code, reason: reason.toString() };
      rec.wake();
      resolve(rec.closeInfo);
    });
  });
  ws.on('error', (err) => { rec.error = err; });
  ws.on('message', (data, isBinary) => {
    let msg;
    if (format === 'msgpack') {
      assert.equal(isBinary, true, 'msgpack messages come in binary frames');
      msg = decode(data, { useBigInt64: false });
    } else {
      assert.equal(isBinary, false, 'JSON messages come in text frames');
      msg = JSON.parse(data.toString());
    }
    rec.push(msg);
  });
  rec.send = (msg) => ws.send(format === 'msgpack' ? encode(msg) : JSON.stringify(msg));
  rec.close = () => { try { ws.close(); } catch { /* already */ } };
  rec.terminate = () => { try { ws.terminate(); } catch { /* already */ } };
  rec.pause = () => ws.pause();
  rec.resume = () => ws.resume();
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
  rec.welcome = await rec.next((m) => m.type === 'welcome', 10000, 'welcome');
  return rec;
}

// the SSE URL of a stream
export function sseUrl(base, { subscription, params, tok, extra = {} }) {
  const q = new URLSearchParams();
  q.set('subscription', subscription);
  if (params !== undefined) q.set('params', JSON.stringify(params));
  if (tok !== undefined) q.set('access_token', tok);
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) q.set(k, String(v));
  return `${base}/v1/sse?${q}`;
}

/*
 * A raw SSE stream read with fetch (so that Last-Event-ID can be set and
 * reading can be paused).  status !== 200: { status, body }.  Otherwise a
 * recorder with close(), pause(), resume(), `ended` (the server ended it).
 */
export async function sseRaw(url, headers = {}) {
  const ac = new AbortController();
  const res = await fetch(url, { headers, signal: ac.signal });
  if (res.status !== 200) {
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, body, text };
  }
  const rec = recorder();
  rec.kind = 'sse-raw';
  rec.status = 200;
  rec.headers = res.headers;
  rec.comments = [];
  let paused = null;
  rec.pause = () => { if (!paused) { let r; const p = new Promise((x) => { r = x; }); paused = { p, r }; } };
  rec.resume = () => { if (paused) { const { r } = paused; paused = null; r(); } };
  rec.close = () => { rec.resume(); ac.abort(); };
  rec.terminate = rec.close;
  rec.closed = (async () => {
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        if (paused) await paused.p;
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let type = 'message';
          let id;
          let data;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) { rec.comments.push(line.slice(1).trim()); continue; }
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (field === 'event') type = value;
            else if (field === 'id') id = value;
            else if (field === 'data') data = data === undefined ? value : `${data}\n${value}`;
          }
          if (data !== undefined) {
            const msg = JSON.parse(data);
            assert.equal(msg.type, type, 'event: is the message type');
            if (id !== undefined) Object.defineProperty(msg, 'sseId', { value: id, enumerable: false });
            rec.push(msg);
          }
        }
      }
      rec.ended = true;
    } catch { /* aborted */ }
    rec.isClosed = true;
    rec.closeInfo = { ended: !!rec.ended };
    rec.wake();
    return rec.closeInfo;
  })();
  return rec;
}

/*
 * An EventSource (the real browser-API client) on a stream: its events
 * land in the log with `sseId` = lastEventId.  Reconnects by itself, with
 * Last-Event-ID, as EventSource does; `failures` counts its error events
 * without data (connection failures).
 */
export function sseEventSource(url) {
  const rec = recorder();
  rec.kind = 'sse-eventsource';
  rec.failures = 0;
  const es = new EventSource(url);
  rec.es = es;
  for (const type of ['welcome', 'subscribed', 'snapshot', 'change', 'changes', 'message', 'live', 'reset']) {
    es.addEventListener(type, (e) => {
      const msg = JSON.parse(e.data);
      Object.defineProperty(msg, 'sseId', { value: e.lastEventId, enumerable: false });
      rec.push(msg);
    });
  }
  es.addEventListener('error', (e) => {
    if (e.data !== undefined) rec.push(JSON.parse(e.data));
    else { rec.failures++; rec.lastFailure = { code: e.code, message: e.message }; rec.wake(); }
  });
  rec.close = () => es.close();
  rec.terminate = rec.close;
  return rec;
}

// ------------------------------------------------------------------ writers
/*
 * n writer loops, each on its own connection, calling step(db, r, i) until
 * stop(); errors (deadlocks, a restarting server) roll back and reconnect.
 * Returns { stop(), ops, errors, done }.
 */
export function writers(n, step, { seed = 1, pauseMs = [0, 3] } = {}) {
  const state = { running: true, ops: 0, errors: 0, lastError: null };
  const loops = [];
  for (let i = 0; i < n; i++) {
    const r = rng(seed * 7919 + i);
    loops.push((async () => {
      let db = null;
      while (state.running) {
        try {
          if (!db) db = await connectDb();
          await step(db, r, i);
          state.ops++;
        } catch (err) {
          state.errors++;
          state.lastError = err;
          if (db) {
            try { await db.query('ROLLBACK'); } catch { try { db.end().catch(() => {}); } catch { /* gone */ } db = null; }
          }
          await sleep(50);
        }
        const [lo, hi] = pauseMs;
        if (hi > 0) await sleep(r.int(lo, hi));
      }
      if (db) await db.end().catch(() => {});
    })());
  }
  state.done = Promise.all(loops);
  state.stop = async () => { state.running = false; await state.done; };
  return state;
}

// ------------------------------------------------------------------ streams
// the change bodies of a subscription in a log (`changes` batches flattened)
export function changesOf(log, id) {
  const out = [];
  for (const m of log) {
    if (m.type === 'change' && m.id === id) out.push(m);
    else if (m.type === 'changes' && m.id === id) for (const e of m.events) out.push({ ...e, id });
  }
  return out;
}

// asserts that the event ids of these changes strictly increase
export function assertIncreasing(evs, what) {
  for (let i = 1; i < evs.length; i++) {
    assert.ok(eid(evs[i].event) > eid(evs[i - 1].event),
      `${what}: event ids strictly increase (${evs[i - 1].event} then ${evs[i].event} at ${i})`);
  }
}

// ------------------------------------------------------------------ resuming
/*
 * A subscriber that outlives its connections: open() connects a client of
 * `kind` ('ws-json', 'ws-msgpack' or 'sse-raw') and subscribes — the first
 * time as asked (optionally with a snapshot), afterwards resuming after
 * the newest event id it received (a change's event, or live.at).
 * Everything is recorded across connections:
 *   rows      snapshot rows;  events  change bodies;  resets  reset messages
 *   sessions  [{ client, subscribed, resumeFrom }]
 * Checks made as messages arrive (failures collected in `problems`):
 * SSE ids are `<event id>@<epoch>`, the epoch never changes, a resumed
 * subscribed has resumed: true and at = the id resumed from.
 */
export class Resumer {
  constructor({ kind, port, base, tok, subscription, params, id = 'r', snapshot = false, chunkRows }) {
    Object.assign(this, { kind, port, base, tok, subscription, params, snapshot, chunkRows });
    this.id = kind.startsWith('sse') ? 'sse' : id;
    this.rows = [];
    this.events = [];
    this.resets = [];
    this.sessions = [];
    this.problems = [];
    this.last = null;
    this.epoch = null;
    this.client = null;
  }

  problem(s) { this.problems.push(`${this.kind}: ${s}`); }

  // connect and subscribe (or resume); resolves once subscribed or reset
  // arrived (returns that message); throws when the connection fails
  async open({ timeoutMs = 15000 } = {}) {
    const resumeFrom = this.last;
    const session = { resumeFrom, subscribed: null, live: null, reset: null };
    let client;
    if (this.kind === 'sse-raw') {
      const extra = {};
      if (this.snapshot) extra.snapshot = 'true';
      if (this.chunkRows) extra.chunkRows = this.chunkRows;
      const headers = resumeFrom ? { 'Last-Event-ID': `${resumeFrom}@${this.epoch}` } : {};
      client = await sseRaw(sseUrl(this.base, { subscription: this.subscription, params: this.params, tok: this.tok, extra }),
        headers);
      if (client.status !== 200) throw new Error(`SSE refused: ${client.status} ${client.text}`);
    } else {
      client = await wsClient({ port: this.port, tok: this.tok, format: this.kind === 'ws-msgpack' ? 'msgpack' : 'json' });
    }
    session.client = client;
    this.client = client;
    this.sessions.push(session);
    const onMessage = (m) => this.#take(session, m);
    // route every recorded message through #take, in order
    const origPush = client.push.bind(client);
    for (const m of client.log) onMessage(m);
    client.push = (m) => { origPush(m); onMessage(m); };
    if (!this.kind.startsWith('sse')) {
      const msg = { type: 'subscribe', id: this.id, subscription: this.subscription, params: this.params };
      if (this.snapshot) msg.snapshot = true;
      if (this.chunkRows) msg.chunkRows = this.chunkRows;
      if (resumeFrom) msg.resume = { epoch: this.epoch, after: resumeFrom };
      client.send(msg);
    }
    return client.wait((m) => (m.type === 'subscribed' || m.type === 'reset' || m.type === 'error') &&
      (m.id === this.id || m.ref === this.id), timeoutMs, `${this.kind}: subscribed`);
  }

  #take(session, m) {
    if (m.type === 'welcome') {
      if (this.epoch === null) this.epoch = m.epoch;
      else if (m.epoch !== this.epoch) this.problem(`the epoch changed: ${this.epoch} -> ${m.epoch}`);
      return;
    }
    if (m.id !== this.id && m.ref !== this.id) return;
    switch (m.type) {
      case 'subscribed':
        session.subscribed = m;
        if (session.resumeFrom && !session.reset) {
          if (m.resumed !== true) this.problem(`subscribed after resuming from ${session.resumeFrom}: resumed is ${m.resumed}`);
          if (m.at !== session.resumeFrom) this.problem(`resumed subscribed.at ${m.at} != ${session.resumeFrom}`);
        }
        if (m.epoch !== undefined && m.epoch !== this.epoch) this.problem(`subscribed.epoch ${m.epoch} != ${this.epoch}`);
        if (!this.snapshot && !session.resumeFrom && this.last === null) this.last = m.at;
        break;
      case 'snapshot':
        for (const row of m.rows) this.rows.push(row);
        break;
      case 'live':
        session.live = m;
        if (m.epoch !== this.epoch) this.problem(`live.epoch ${m.epoch} != ${this.epoch}`);
        if (m.sseId !== undefined && m.sseId !== `${m.at}@${this.epoch}`) this.problem(`SSE id of live: ${m.sseId}`);
        if (this.last === null || eid(m.at) >= eid(this.last)) this.last = m.at;
        else this.problem(`live.at ${m.at} before the last event ${this.last}`);
        break;
      case 'change':
      case 'changes':
        for (const e of changesOf([m], this.id)) {
          this.events.push(e);
          this.last = e.event;
        }
        if (m.sseId !== undefined) {
          const last = m.type === 'change' ? m.event : m.events[m.events.length - 1].event;
          if (m.sseId !== `${last}@${this.epoch}`) this.problem(`SSE id ${m.sseId} of event ${last}`);
        }
        break;
      case 'reset':
        session.reset = m;
        this.resets.push(m);
        break;
      case 'error':
        this.problem(`error ${short(m)}`);
        break;
      default:
        break;
    }
  }

  drop() { if (this.client) this.client.terminate(); }

  // the union's keys (snapshot rows and change rows), and duplicates
  keys(key = (row) => row.seq) {
    const seen = new Set();
    const dups = [];
    for (const row of [...this.rows, ...this.events.map((e) => e.row ?? e.old)]) {
      const k = key(row);
      if (seen.has(k)) dups.push(k);
      seen.add(k);
    }
    return { seen, dups };
  }
}

/*
 * Compares a Resumer's snapshot rows ∪ change rows with the keys expected
 * (insert-only tables): no duplicate, none missing, none extra; event ids
 * strictly increase over all connections; no problems recorded.
 */
export function assertExact(r, expected, what) {
  assert.deepEqual(r.problems, [], `${what}: ${r.problems.slice(0, 5).join('; ')}`);
  for (const e of r.events) assert.equal(e.op, 'insert', `${what}: only inserts`);
  assertIncreasing(r.events, what);
  const { seen, dups } = r.keys();
  const want = new Set(expected);
  const missing = [...want].filter((k) => !seen.has(k));
  const extra = [...seen].filter((k) => !want.has(k));
  assert.deepEqual({ duplicates: dups.slice(0, 20), missing: missing.slice(0, 20), extra: extra.slice(0, 20) },
    { duplicates: [], missing: [], extra: [] },
    `${what}: ${dups.length} duplicates, ${missing.length} missing, ${extra.length} extra of ${want.size}`);
}
