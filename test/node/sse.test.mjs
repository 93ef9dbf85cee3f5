// test/node/sse.test.mjs — the Server-Sent Events endpoint GET /v1/sse
// (docs/protocol.md, "Server-Sent Events") against the rtsub server of the
// shared test cluster, with the real `eventsource` client (v3: WhatWG API,
// request headers through its `fetch` option) and plain fetch for the
// response heads, refusals, comments and the end of a stream.
//
// Covers: welcome and subscribed events; changes committed after
// `subscribed` with id: = the event id; filters with parameters and policies
// over claims (a row of another org never arrives); move-out as delete;
// includeMetadata; the token in the query or in Authorization: Bearer;
// Last-Event-ID accepted; every refusal (401 with the token's code, 403
// origin / forbidden role, 404 unknown subscription, 400 bad parameters);
// heartbeat comments; the end of a stream at token expiry; closing the
// client closes the subscription (rtsub_sse_sessions_open).
//
// Fixtures (table, roles, subscription, policy) are prefixed sse_ and live
// in database postgres (rtsub.database); settings changed with ALTER
// SYSTEM + pg_reload_conf() are reset afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import * as jose from 'jose';
import pg from 'pg';

const ROLE = 'sse_user';
const OTHER_ROLE = 'sse_other';      // exists, but is not among the subscription's roles
const SUB = 'sse_org_tasks';
const ALLOWED_ORIGIN = 'http://allowed.example';   // test/cluster.conf
const EVENT_ID = /^[0-9A-F]+\/[0-9A-F]+:\d+$/;
const SSE_ID = /^[0-9A-F]+\/[0-9A-F]+:\d+@[0-9a-f]{16}$/;

let db;
let base;
let secret;
const sources = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Math.floor(Date.now() / 1000);

// an HS256 token (role ROLE, org 1, an hour) with the given claims
async function token(claims = {}, key) {
  const body = { role: ROLE, org: 1, exp: now() + 3600, ...claims };
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return new jose.SignJWT(body).setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(key ?? secret));
}

// the URL of a stream
function sseUrl({ subscription = SUB, params, tok, extra = {} } = {}) {
  const q = new URLSearchParams();
  if (subscription !== null) q.set('subscription', subscription);
  if (params !== undefined) q.set('params', typeof params === 'string' ? params : JSON.stringify(params));
  if (tok !== undefined) q.set('access_token', tok);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return `${base}/v1/sse?${q}`;
}

// set server settings and wait until the worker has them
async function settings(values) {
  for (const [k, v] of Object.entries(values)) {
    if (v === null) await db.query(`ALTER SYSTEM RESET ${k}`);
    else await db.query(`ALTER SYSTEM SET ${k} = '${v}'`);
  }
  await db.query('SELECT pg_reload_conf()');
  await sleep(400);
}

async function metric(name) {
  const body = await (await fetch(`${base}/metrics`)).text();
  const m = body.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} present`);
  return Number(m[1]);
}

// wait until fn() is true (polling), or fail
async function until(fn, what, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// an inbox of events with next(pred) (shared by both kinds of client)
function inbox() {
  const items = [];
  const waiters = [];
  return {
    items,
    push(x) { items.push(x); for (const w of waiters.splice(0)) w(); },
    wake() { for (const w of waiters.splice(0)) w(); },
    async next(pred, timeoutMs = 5000, what = 'an event') {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = items.findIndex(pred);
        if (i >= 0) return items.splice(i, 1)[0];
        const left = end - Date.now();
        if (left <= 0) assert.fail(`timed out waiting for ${what}; got ${JSON.stringify(items)}`);
        await new Promise((r) => { waiters.push(r); setTimeout(r, left); });
      }
    },
  };
}

/*
 * An EventSource on a stream; its events (welcome, subscribed, change,
 * error...) land in the inbox as { type, id, data } with data parsed.
 */
function eventSource(url, { headers } = {}) {
  const box = inbox();
  const opts = {};
  if (headers) {
    opts.fetch = (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } });
  }
  const es = new EventSource(url, opts);
  sources.push(es);
  for (const type of ['welcome', 'subscribed', 'snapshot', 'change', 'changes', 'message', 'live', 'reset']) {
    es.addEventListener(type, (e) => box.push({ type, id: e.lastEventId, data: JSON.parse(e.data) }));
  }
  // `error` is both the server's error event (with data) and a failure
  es.addEventListener('error', (e) => {
    if (e.data !== undefined) box.push({ type: 'error', id: e.lastEventId, data: JSON.parse(e.data) });
    else box.push({ type: 'failure', code: e.code, message: e.message });
  });
  return { es, ...box, changes: async (ms = 500) => {
    await sleep(ms);
    const out = box.items.filter((x) => x.type === 'change');
    box.items.splice(0, box.items.length, ...box.items.filter((x) => x.type !== 'change'));
    return out;
  } };
}

/*
 * A stream read with fetch: { status, headers } and, for 200, an inbox of
 * { type, id, data } events and { comment } lines, `ended` once the server
 * ended the response, close().  For other statuses, body is the JSON body.
 */
async function rawStream(url, headers = {}) {
  const ac = new AbortController();
  const res = await fetch(url, { headers, signal: ac.signal });
  if (res.status !== 200) {
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, headers: res.headers, body, text };
  }
  const box = inbox();
  const client = { status: res.status, headers: res.headers, ...box, ended: false, close: () => ac.abort() };
  (async () => {
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = { type: 'message', id: undefined, data: undefined, lines: block.split('\n') };
          for (const line of ev.lines) {
            if (line.startsWith(':')) { box.push({ comment: line.slice(1).trim() }); continue; }
            const c = line.indexOf(':');
            const field = line.slice(0, c);
            const value = line.slice(c + 1).replace(/^ /, '');
            if (field === 'event') ev.type = value;
            else if (field === 'id') ev.id = value;
            else if (field === 'data') ev.data = ev.data === undefined ? value : `${ev.data}\n${value}`;
          }
          if (ev.data !== undefined) box.push({ ...ev, data: JSON.parse(ev.data) });
        }
      }
    } catch { /* aborted */ }
    client.ended = true;
    box.wake();
  })();
  return client;
}

const summary = (evs) => evs.map((e) => `${e.data.op}:${e.data.row.id}`).join(' ');

before(async () => {
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  base = `http://127.0.0.1:${port}`;
  secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  assert.ok(secret, 'test/cluster.conf sets rtsub.jwt_secret');
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(10000) AS up')).rows[0].up, true);
  await db.query('DROP TABLE IF EXISTS sse_tasks CASCADE');
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}') THEN CREATE ROLE ${ROLE}; END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${OTHER_ROLE}') THEN CREATE ROLE ${OTHER_ROLE}; END IF;
    END $$`);
  await db.query('CREATE TABLE sse_tasks (id int PRIMARY KEY, org_id int NOT NULL, title text)');
  await db.query(`GRANT SELECT ON sse_tasks TO ${ROLE}, ${OTHER_ROLE}`);
  await db.query("SELECT rtsub.publish('sse_tasks', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('${SUB}', 'sse_tasks',
      filter => 'org_id = params.org_id', params => '{"org_id": "integer"}', roles => '{${ROLE}}')`);
  await db.query(`SELECT rtsub.create_policy('sse_tasks', 'sse_same_org',
      'org_id = (rtsub.claims() ->> ''org'')::int')`);
});

after(async () => {
  for (const es of sources) es.close();
  await settings({ 'rtsub.heartbeat_interval': null, 'rtsub.jwt_leeway': null });
  await db.query('DROP TABLE IF EXISTS sse_tasks CASCADE');
  await db.end();
});

test('response head, welcome and subscribed', async () => {
  const c = await rawStream(sseUrl({ params: { org_id: 1 }, tok: await token() }));
  assert.equal(c.status, 200);
  assert.equal(c.headers.get('content-type'), 'text/event-stream');
  assert.equal(c.headers.get('cache-control'), 'no-store');
  assert.equal(c.headers.get('x-accel-buffering'), 'no');
  assert.equal(c.headers.get('content-length'), null, 'no length: the stream lasts until closed');
  const w = await c.next((e) => e.type === 'welcome', 5000, 'welcome');
  assert.equal(w.data.type, 'welcome');
  assert.equal(w.data.protocol, 1);
  assert.equal(w.data.role, ROLE);
  assert.match(w.data.epoch, /^[0-9a-f]{16}$/);
  assert.equal(w.id, undefined, 'welcome carries no id');
  const s = await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
  assert.equal(s.data.id, 'sse');
  assert.match(s.data.at, EVENT_ID);
  assert.deepEqual(c.items.filter((e) => e.type), [], 'welcome came first, then subscribed');
  c.close();
});

test('changes arrive with id: = event id; filters, policies, move-out as delete', async () => {
  await db.query('TRUNCATE sse_tasks');
  // alice (org 1) watches org 1: token in the query
  const alice = eventSource(sseUrl({ params: { org_id: 1 }, tok: await token({ sub: 'alice', org: 1 }) }));
  // bob (org 2) asks for org 1: the policy hides it; token in Authorization
  const bob = eventSource(sseUrl({ params: { org_id: 1 } }),
    { headers: { Authorization: `Bearer ${await token({ sub: 'bob', org: 2 })}` } });
  for (const c of [alice, bob]) {
    const w = await c.next((e) => e.type === 'welcome', 5000, 'welcome');
    assert.equal(w.data.role, ROLE);
    c.epoch = w.data.epoch;
    await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
  }

  await db.query(`INSERT INTO sse_tasks VALUES (1, 1, 'a'), (2, 2, 'other org'), (3, 1, 'c')`);
  await db.query("UPDATE sse_tasks SET title = 'a2' WHERE id = 1");
  await db.query('UPDATE sse_tasks SET org_id = 2 WHERE id = 3');   // leaves org 1
  await db.query('DELETE FROM sse_tasks WHERE id = 2');             // never visible

  const a = [];
  while (a.length < 4) a.push(await alice.next((e) => e.type === 'change', 5000, `change ${a.length + 1}`));
  assert.deepEqual(await alice.changes(300), [], 'nothing more for alice');
  assert.equal(summary(a), 'insert:1 insert:3 update:1 delete:3');
  for (const e of a) {
    assert.match(e.id, SSE_ID);
    assert.equal(e.id, `${e.data.event}@${alice.epoch}`, 'the SSE id is the event id @ the epoch');
    assert.equal(e.data.type, 'change');
    assert.equal(e.data.id, 'sse');
    assert.ok(e.data.row.org_id === 1, 'only rows of org 1');
  }
  assert.equal(a[2].data.row.title, 'a2');
  assert.equal(a[2].data.old.title, 'a');
  assert.equal(a[3].data.row.id, 3, 'move-out arrives as delete of the row');
  assert.deepEqual(await bob.changes(0), [], 'the policy hides org 1 from org 2');
  alice.es.close();
  bob.es.close();
});

test('includeMetadata; Last-Event-ID resumes after that event, or is refused when malformed', async () => {
  const url = sseUrl({ params: { org_id: 1 }, tok: await token(), extra: { includeMetadata: 'true' } });
  const c = await rawStream(url);
  assert.equal(c.status, 200);
  const w = await c.next((e) => e.type === 'welcome', 5000, 'welcome');
  await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
  await db.query(`INSERT INTO sse_tasks VALUES (10, 1, 'meta')`);
  const e = await c.next((x) => x.type === 'change', 5000, 'change');
  assert.equal(e.data.table, 'public.sse_tasks');
  assert.ok(Number.isInteger(e.data.xid));
  assert.equal(e.id, `${e.data.event}@${w.data.epoch}`);
  c.close();

  // missed while disconnected: exactly these two, in order
  await db.query(`INSERT INTO sse_tasks VALUES (11, 1, 'missed 1'), (12, 2, 'other org')`);
  await db.query(`UPDATE sse_tasks SET title = 'missed 2' WHERE id = 10`);
  const r = await rawStream(url, { 'Last-Event-ID': e.id });
  assert.equal(r.status, 200);
  const s = await r.next((x) => x.type === 'subscribed', 5000, 'subscribed');
  assert.equal(s.data.resumed, true);
  assert.equal(s.data.at, e.data.event);
  const m1 = await r.next((x) => x.type === 'change', 5000, 'missed change 1');
  const m2 = await r.next((x) => x.type === 'change', 5000, 'missed change 2');
  assert.deepEqual([m1.data.op, m1.data.row.id, m2.data.op, m2.data.row.title], ['insert', 11, 'update', 'missed 2']);
  const live = await r.next((x) => x.type === 'live', 5000, 'live');
  assert.equal(live.id, `${live.data.at}@${w.data.epoch}`);
  assert.deepEqual(r.items.filter((x) => x.type === 'change'), [], 'nothing twice');
  r.close();

  for (const bad of ['0/0:0', 'x@0123456789abcdef', '0/0:0@nothex0000000000']) {
    const b = await rawStream(url, { 'Last-Event-ID': bad });
    assert.equal(b.status, 400, bad);
    assert.equal(b.body.error.code, 'bad_field', bad);
  }
});

test('refusals: HTTP status and a JSON error body with the code', async () => {
  const p = { org_id: 1 };
  const cases = [
    ['no token', sseUrl({ params: p }), {}, 401, 'auth_required'],
    ['not Bearer', sseUrl({ params: p }), { Authorization: 'Basic eDp5' }, 401, 'token_malformed'],
    ['malformed token', sseUrl({ params: p, tok: 'abc' }), {}, 401, 'token_malformed'],
    ['bad signature', sseUrl({ params: p, tok: await token({}, 'another-secret-0123456789abcdef-0123456789') }), {},
      401, 'token_bad_signature'],
    ['expired', sseUrl({ params: p, tok: await token({ exp: now() - 3600 }) }), {}, 401, 'token_expired'],
    ['no such role', sseUrl({ params: p, tok: await token({ role: 'sse_no_such_role' }) }), {}, 401, 'role_not_found'],
    ['unknown subscription', sseUrl({ subscription: 'sse_nope', params: p, tok: await token() }), {},
      404, 'unknown_subscription'],
    ['no subscription', sseUrl({ subscription: null, tok: await token() }), {}, 400, 'bad_field'],
    ['params not JSON', sseUrl({ params: '{org_id', tok: await token() }), {}, 400, 'bad_params'],
    ['params not an object', sseUrl({ params: '[1]', tok: await token() }), {}, 400, 'bad_params'],
    ['param of the wrong type', sseUrl({ params: { org_id: 'abc' }, tok: await token() }), {}, 400, 'bad_params'],
    ['param missing', sseUrl({ tok: await token() }), {}, 400, 'bad_params'],
    ['unknown param', sseUrl({ params: { org_id: 1, x: 2 }, tok: await token() }), {}, 400, 'bad_params'],
    ['bad batchSize', sseUrl({ params: p, tok: await token(), extra: { batchSize: '0' } }), {}, 400, 'bad_field'],
    ['forbidden role', sseUrl({ params: p, tok: await token({ role: OTHER_ROLE }) }), {}, 403, 'forbidden'],
    ['origin', sseUrl({ params: p, tok: await token() }), { Origin: 'http://evil.example' }, 403, 'origin_not_allowed'],
  ];
  const refusedBefore = await metric('rtsub_sse_sessions_refused_total');
  for (const [what, url, headers, status, code] of cases) {
    const r = await rawStream(url, headers);
    assert.equal(r.status, status, `${what}: ${r.text}`);
    assert.equal(r.body?.error?.code, code, `${what}: ${r.text}`);
    assert.equal(typeof r.body.error.message, 'string');
    assert.match(r.headers.get('content-type'), /^application\/json/);
    if (status === 401) assert.match(r.headers.get('www-authenticate'), /^Bearer/, what);
  }
  assert.ok(await metric('rtsub_sse_sessions_refused_total') >= refusedBefore + cases.length);

  // an allowed Origin is accepted
  const ok = await rawStream(sseUrl({ params: p, tok: await token() }), { Origin: ALLOWED_ORIGIN });
  assert.equal(ok.status, 200);
  ok.close();

  // EventSource gives up on a refusal (no reconnect loop)
  const es = eventSource(sseUrl({ params: p }));
  const f = await es.next((e) => e.type === 'failure', 5000, 'failure');
  assert.equal(f.code, 401);
  assert.equal(es.es.readyState, EventSource.CLOSED);
});

test('heartbeat comments when rtsub.heartbeat_interval is lowered', async () => {
  await settings({ 'rtsub.heartbeat_interval': '300ms' });
  try {
    const c = await rawStream(sseUrl({ params: { org_id: 1 }, tok: await token() }));
    const w = await c.next((e) => e.type === 'welcome', 5000, 'welcome');
    assert.equal(w.data.heartbeatMs, 300);
    const h1 = await c.next((e) => e.comment !== undefined, 3000, 'heartbeat comment');
    assert.match(h1.comment, /^hb [0-9A-F]+\/[0-9A-F]+:0$/);
    await c.next((e) => e.comment !== undefined, 3000, 'second heartbeat comment');
    c.close();
  } finally {
    await settings({ 'rtsub.heartbeat_interval': null });
  }
});

test('token expiry: an error event token_expired, then the stream ends', async () => {
  await settings({ 'rtsub.jwt_leeway': '0' });
  try {
    const c = await rawStream(sseUrl({ params: { org_id: 1 }, tok: await token({ exp: now() + 2 }) }));
    assert.equal(c.status, 200);
    await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
    const e = await c.next((x) => x.type === 'error', 6000, 'error event');
    assert.equal(e.data.code, 'token_expired');
    await until(() => c.ended, 'the end of the stream', 3000);
  } finally {
    await settings({ 'rtsub.jwt_leeway': null });
  }
});

test('closing the client closes the stream and its subscription', async () => {
  const open0 = await metric('rtsub_sse_sessions_open');
  const accepted0 = await metric('rtsub_sse_sessions_accepted_total');
  const cs = [];
  for (let i = 0; i < 3; i++) {
    const c = eventSource(sseUrl({ params: { org_id: 1 }, tok: await token() }));
    await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
    cs.push(c);
  }
  assert.equal(await metric('rtsub_sse_sessions_open'), open0 + 3);
  assert.equal(await metric('rtsub_sse_sessions_accepted_total'), accepted0 + 3);
  for (const c of cs) c.es.close();
  await until(async () => (await metric('rtsub_sse_sessions_open')) === open0,
    'rtsub_sse_sessions_open back to its value before');
  // the server still delivers to a new stream
  const c = eventSource(sseUrl({ params: { org_id: 1 }, tok: await token() }));
  await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
  await db.query(`INSERT INTO sse_tasks VALUES (20, 1, 'after close')`);
  const e = await c.next((x) => x.type === 'change', 5000, 'change');
  assert.equal(e.data.row.id, 20);
  c.es.close();
});

test('CORS: an allowed origin gets Access-Control-Allow-Origin and a preflight; lastEventId in the query resumes', async () => {
  const url = sseUrl({ params: { org_id: 1 }, tok: await token() });
  const pre = await fetch(url, { method: 'OPTIONS', headers: { Origin: ALLOWED_ORIGIN, 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'last-event-id' } });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
  assert.match(pre.headers.get('access-control-allow-headers'), /Last-Event-ID/);
  assert.match(pre.headers.get('access-control-allow-methods'), /GET/);
  assert.match(pre.headers.get('vary'), /Origin/);
  const evil = await fetch(url, { method: 'OPTIONS', headers: { Origin: 'http://evil.example' } });
  assert.equal(evil.status, 403);
  assert.equal(evil.headers.get('access-control-allow-origin'), null);

  const c = await rawStream(url, { Origin: ALLOWED_ORIGIN });
  assert.equal(c.status, 200);
  assert.equal(c.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
  const w = await c.next((e) => e.type === 'welcome', 5000, 'welcome');
  await c.next((e) => e.type === 'subscribed', 5000, 'subscribed');
  await db.query(`INSERT INTO sse_tasks VALUES (30, 1, 'cors')`);
  const e = await c.next((x) => x.type === 'change', 5000, 'change');
  c.close();
  await db.query(`INSERT INTO sse_tasks VALUES (31, 1, 'missed')`);
  // EventSource cannot set headers on its first request: the id may come in the query
  const r = await rawStream(`${url}&lastEventId=${encodeURIComponent(e.id)}`, { Origin: ALLOWED_ORIGIN });
  const s = await r.next((x) => x.type === 'subscribed', 5000, 'subscribed');
  assert.equal(s.data.resumed, true);
  const m = await r.next((x) => x.type === 'change', 5000, 'missed change');
  assert.equal(m.data.row.id, 31);
  assert.equal(w.data.epoch, s.data.epoch);
  r.close();
});
