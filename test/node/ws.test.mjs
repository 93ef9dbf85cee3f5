// test/node/ws.test.mjs — the rtsub server's WebSocket endpoint /v1/ws
// (docs/protocol.md), against the shared test cluster (test/run: PGHOST etc.
// set; test/cluster.conf gives the server its port, the HS256 secret below
// and rtsub.allowed_origins = 'http://allowed.example').
//
// Covers: the subprotocols rtsub.v1.json and rtsub.v1.msgpack; the three ways
// to authenticate (Authorization header, access_token query parameter, a
// first `auth` message) and the 5 s auth deadline; every token failure code
// at the handshake (HTTP 401 with a JSON body) and in an auth message (close
// 4401); Origin checks; path and subprotocol refusals; ping/pong; errors that
// keep the connection open; the close codes 4400, 1009, 4008, 4401 (token
// expiry), 1001 (server shutdown); refresh; heartbeats; permessage-deflate;
// 200 concurrent connections; metrics and the audit log.
//
// Settings some tests need (leeway, heartbeat, audience...) are changed with
// ALTER SYSTEM + pg_reload_conf() and reset afterwards.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import WebSocket from 'ws';
import { encode as mpEncode, decode as mpDecode } from '@msgpack/msgpack';
import * as jose from 'jose';
import pg from 'pg';

const SECRET = 'rtsub-ws-test-secret-0123456789abcdef-0123456789';
const SECRET_KEY = new TextEncoder().encode(SECRET);
const ROLE = 'rtsub_ws_test_role';
const ALLOWED_ORIGIN = 'http://allowed.example';
const JSON_P = 'rtsub.v1.json';
const MSGPACK_P = 'rtsub.v1.msgpack';
const EVENT_ID = /^[0-9A-F]+\/[0-9A-F]+:0$/;

let db;
let port;
let url;
let base;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Math.floor(Date.now() / 1000);

// an HS256 token (role ROLE, exp in an hour unless given)
async function token(claims = {}, { alg = 'HS256', key = SECRET_KEY } = {}) {
  const body = { role: ROLE, exp: now() + 3600, ...claims };
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return new jose.SignJWT(body).setProtectedHeader({ alg }).sign(key);
}

// set server settings (ALTER SYSTEM, reload) and wait until the worker has them
async function settings(values) {
  for (const [k, v] of Object.entries(values)) {
    if (v === null)
      await db.query(`ALTER SYSTEM RESET ${k}`);
    else
      await db.query(`ALTER SYSTEM SET ${k} = '${v}'`);
  }
  await db.query('SELECT pg_reload_conf()');
  await sleep(400);
}

// read one metric from /metrics
async function metric(name) {
  const body = await (await fetch(`${base}/metrics`)).text();
  const m = body.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} present`);
  return Number(m[1]);
}

/*
 * Open a WebSocket.  Resolves to a client { ws, protocol, next(), send(),
 * closed } once open, or to { status, headers, body } when the server
 * answered the upgrade with an HTTP status, or to { error } when the
 * connection failed.
 */
function connect({ tok, via = 'header', protocol = JSON_P, origin, pmd = false,
  path = '/v1/ws', headers = {} } = {}) {
  let target = `${url}${path}`;
  const h = { ...headers };
  if (tok !== undefined && via === 'header') h.Authorization = `Bearer ${tok}`;
  if (tok !== undefined && via === 'query') target += `?access_token=${encodeURIComponent(tok)}`;
  const opts = { headers: h, perMessageDeflate: pmd, maxPayload: 64 * 1024 * 1024 };
  if (origin) opts.origin = origin;
  return new Promise((resolve) => {
    const ws = new WebSocket(target, protocol ?? undefined, opts);
    const queue = [];
    const waiters = [];
    let closeInfo = null;
    let closeWaiters = [];
    const isMsgpack = protocol === MSGPACK_P;
    const client = {
      ws,
      protocol,
      binaryFrames: 0,
      textFrames: 0,
      // the next message (decoded), or throws on timeout / close
      next(timeoutMs = 5000) {
        if (queue.length) return Promise.resolve(queue.shift());
        return new Promise((res, rej) => {
          const t = setTimeout(() => rej(new Error('no message within ' + timeoutMs + ' ms')), timeoutMs);
          waiters.push((m) => { clearTimeout(t); res(m); });
        });
      },
      // the next message of a type, skipping others (heartbeats...)
      async nextOf(type, timeoutMs = 5000) {
        const end = Date.now() + timeoutMs;
        for (;;) {
          const m = await client.next(Math.max(1, end - Date.now()));
          if (m.type === type) return m;
        }
      },
      send(obj) {
        if (isMsgpack) ws.send(mpEncode(obj), { binary: true });
        else ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
      },
      // { code, reason } once closed
      closed(timeoutMs = 10000) {
        if (closeInfo) return Promise.resolve(closeInfo);
        return new Promise((res, rej) => {
          const t = setTimeout(() => rej(new Error('not closed within ' + timeoutMs + ' ms')), timeoutMs);
          closeWaiters.push((c) => { clearTimeout(t); res(c); });
        });
      },
      pending: queue,
    };
    ws.on('message', (data, isBinary) => {
      if (isBinary) client.binaryFrames++; else client.textFrames++;
      const m = isBinary ? mpDecode(data) : JSON.parse(data.toString());
      const w = waiters.shift();
      if (w) w(m); else queue.push(m);
    });
    ws.on('open', () => resolve(client));
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        let json = null;
        try { json = JSON.parse(body); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, body: json, raw: body });
      });
      res.on('error', () => resolve({ status: res.statusCode, headers: res.headers, body: null }));
    });
    ws.on('error', (error) => resolve({ error }));
    ws.on('close', (code, reason) => {
      closeInfo = { code, reason: reason.toString() };
      for (const w of closeWaiters) w(closeInfo);
      closeWaiters = [];
    });
  });
}

// connect, assert the welcome, return the client
async function welcomed(opts = {}) {
  const c = await connect({ tok: await token(), ...opts });
  assert.ok(c.ws, `connection refused: ${c.status} ${c.raw ?? c.error?.message}`);
  const w = await c.next();
  assert.equal(w.type, 'welcome');
  c.welcome = w;
  return c;
}

function done(c) {
  if (c?.ws && c.ws.readyState === WebSocket.OPEN) c.ws.close();
}

before(async () => {
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  url = `ws://127.0.0.1:${port}`;
  base = `http://127.0.0.1:${port}`;
  // the subscription engine reads the catalogs in rtsub.database
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  const up = await db.query('SELECT rtsub.wait_until_running(10000) AS up');
  assert.equal(up.rows[0].up, true);
  await db.query(`DROP ROLE IF EXISTS ${ROLE}`);
  await db.query(`CREATE ROLE ${ROLE}`);
});

after(async () => {
  await settings({
    'rtsub.jwt_leeway': null, 'rtsub.heartbeat_interval': null, 'rtsub.jwt_audience': null,
    'rtsub.jwt_issuer': null, 'rtsub.jwt_algorithms': null, 'rtsub.audit_log': null,
    'rtsub.max_messages_per_second': null,
  });
  await db.query(`DROP ROLE IF EXISTS ${ROLE}`);
  await db.end();
});

describe('handshake and welcome', () => {
  test('welcome in JSON (Authorization header)', async () => {
    const exp = now() + 600;
    const c = await connect({ tok: await token({ exp }) });
    const w = await c.next();
    assert.equal(c.ws.protocol, JSON_P);
    assert.equal(c.textFrames, 1);
    assert.equal(w.type, 'welcome');
    assert.equal(w.protocol, 1);
    assert.match(w.server, /^rtsub\//);
    assert.match(w.epoch, /^[0-9a-f]{16}$/);
    assert.equal(w.role, ROLE);
    assert.equal(w.exp, exp);
    assert.ok(Number.isInteger(w.heartbeatMs));
    assert.deepEqual(Object.keys(w.limits).sort(),
      ['maxMessageSize', 'maxMessagesPerSecond', 'maxSendBuffer', 'maxSubscriptions']);
    assert.equal(w.limits.maxMessageSize, 1048576);
    done(c);
  });

  test('welcome in MessagePack (access_token query parameter), same epoch', async () => {
    const j = await welcomed();
    const c = await connect({ tok: await token(), via: 'query', protocol: MSGPACK_P });
    const w = await c.next();
    assert.equal(c.ws.protocol, MSGPACK_P);
    assert.equal(c.binaryFrames, 1);
    assert.equal(w.type, 'welcome');
    assert.equal(w.role, ROLE);
    assert.equal(w.epoch, j.welcome.epoch, 'one epoch per server start');
    assert.equal(typeof w.limits.maxSubscriptions, 'number');
    done(c);
    done(j);
  });

  test('a first auth message authenticates, in both formats', async () => {
    for (const protocol of [JSON_P, MSGPACK_P]) {
      const c = await connect({ protocol });
      assert.ok(c.ws);
      c.send({ type: 'auth', token: await token() });
      const w = await c.next();
      assert.equal(w.type, 'welcome', protocol);
      assert.equal(w.role, ROLE);
      c.send({ type: 'ping', nonce: 7 });
      assert.deepEqual(await c.next(), { type: 'pong', nonce: 7 });
      done(c);
    }
  });

  test('no auth message within 5 s closes 4401', async () => {
    const c = await connect();
    const t0 = Date.now();
    const closed = await c.closed(10000);
    assert.equal(closed.code, 4401);
    assert.equal(closed.reason, 'auth_timeout');
    const t = Date.now() - t0;
    assert.ok(t >= 4500 && t < 7000, `closed after ${t} ms`);
  });

  test('a first message other than auth closes 4401', async () => {
    const c = await connect();
    c.send({ type: 'ping' });
    assert.deepEqual(await c.closed(), { code: 4401, reason: 'auth_required' });
  });

  test('Origin: allowed, refused with 403, absent', async () => {
    const ok = await welcomed({ origin: ALLOWED_ORIGIN });
    done(ok);
    const ok2 = await welcomed({ origin: 'HTTP://ALLOWED.EXAMPLE:80' });
    done(ok2);
    const r = await connect({ tok: await token(), origin: 'http://evil.example' });
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'origin_not_allowed');
    const r2 = await connect({ tok: await token(), origin: 'null' });
    assert.equal(r2.status, 403);
    const none = await welcomed();
    done(none);
  });

  test('other paths, no subprotocol, unknown subprotocols, plain GET', async () => {
    const p = await connect({ tok: await token(), path: '/v1/other' });
    assert.equal(p.status, 404);
    assert.equal(p.body.error.code, 'not_found');
    const n = await connect({ tok: await token(), protocol: null });
    assert.equal(n.status, 400);
    assert.equal(n.body.error.code, 'subprotocol_required');
    // lws refuses a list without any of ours by closing the connection
    const u = await connect({ tok: await token(), protocol: 'rtsub.v2.json' });
    assert.ok(u.error || u.status >= 400, 'refused');
    // the first listed subprotocol the server knows is chosen
    const both = await connect({ tok: await token(), protocol: ['chat', MSGPACK_P, JSON_P] });
    assert.equal(both.ws.protocol, MSGPACK_P);
    assert.equal((await both.next()).type, 'welcome');
    done(both);
    const g = await fetch(`${base}/v1/ws`);
    assert.equal(g.status, 426);
    assert.equal((await g.json()).error.code, 'upgrade_required');
  });

  test('permessage-deflate is negotiated when offered, and works both ways', async () => {
    const c = await welcomed({ pmd: true });
    assert.match(c.ws.extensions, /permessage-deflate/);
    const big = 'x'.repeat(300000);
    c.send({ type: 'ping', nonce: big });
    assert.equal((await c.nextOf('pong')).nonce, big);
    done(c);
    const plain = await welcomed({ pmd: false });
    assert.equal(plain.ws.extensions, '');
    done(plain);
  });

  test('200 concurrent connections are all welcomed', async () => {
    const tok = await token();
    const clients = await Promise.all(Array.from({ length: 200 }, (_, i) =>
      connect({ tok, protocol: i % 2 ? MSGPACK_P : JSON_P })));
    const welcomes = await Promise.all(clients.map((c) => (c.ws ? c.next(10000) : null)));
    assert.equal(welcomes.filter((w) => w?.type === 'welcome').length, 200);
    assert.ok(await metric('rtsub_ws_sessions_open') >= 200);
    const sent = await metric('rtsub_messages_sent_total');
    assert.ok(sent >= 200);
    await Promise.all(clients.map(async (c) => { c.ws.close(); await c.closed(); }));
    await sleep(200);
    assert.ok(await metric('rtsub_ws_sessions_open') < 200);
  });
});

describe('token failures', () => {
  // a token valid under this describe's settings, but for its defect
  const good = { aud: 'rtsub-ws-test', iss: 'https://issuer.example' };
  const other = new TextEncoder().encode('another-secret-0123456789abcdef-0123456789');
  const cases = [
    ['token_malformed', async () => 'not.a-token'],
    ['token_bad_algorithm', async () => token(good, { alg: 'HS512' })],
    ['token_bad_signature', async () => token(good, { key: other })],
    ['token_expired', async () => token({ ...good, exp: now() - 3600 })],
    ['token_not_yet_valid', async () => token({ ...good, nbf: now() + 3600 })],
    ['token_issued_in_future', async () => token({ ...good, iat: now() + 3600 })],
    ['token_no_role', async () => token({ ...good, role: undefined })],
    ['token_missing_exp', async () => token({ ...good, exp: undefined })],
    ['token_bad_audience', async () => token({ ...good, aud: 'someone-else' })],
    ['token_bad_issuer', async () => token({ ...good, iss: 'https://evil.example' })],
    ['token_no_key', async () => {
      const { privateKey } = await jose.generateKeyPair('RS256');
      return token(good, { alg: 'RS256', key: privateKey });
    }],
    ['role_not_found', async () => token({ ...good, role: 'rtsub_no_such_role' })],
  ];

  before(async () => {
    // audience and issuer checks on; RS256 accepted but no public key set
    await settings({
      'rtsub.jwt_audience': 'rtsub-ws-test', 'rtsub.jwt_issuer': 'https://issuer.example',
      'rtsub.jwt_algorithms': 'HS256,RS256',
    });
  });
  after(async () => {
    await settings({ 'rtsub.jwt_audience': null, 'rtsub.jwt_issuer': null, 'rtsub.jwt_algorithms': null });
  });

  test('a valid token passes with these settings', async () => {
    const c = await welcomed({ tok: await token(good) });
    done(c);
  });

  for (const [code, f] of cases) {
    test(`${code}: 401 at the handshake, 4401 after an auth message`, async () => {
      const tok = await f();
      for (const via of ['header', 'query']) {
        const r = await connect({ tok, via });
        assert.equal(r.status, 401, `${via}: ${r.raw ?? r.error?.message}`);
        assert.equal(r.body.error.code, code, via);
        assert.equal(typeof r.body.error.message, 'string');
        assert.match(r.headers['www-authenticate'], /^Bearer /);
      }
      const c = await connect({ protocol: MSGPACK_P });
      c.send({ type: 'auth', token: tok });
      assert.deepEqual(await c.closed(), { code: 4401, reason: code });
    });
  }

  test('an Authorization header that is not Bearer is refused', async () => {
    const r = await connect({ headers: { Authorization: 'Basic dXNlcjpwYXNz' } });
    assert.equal(r.status, 401);
    assert.equal(r.body.error.code, 'token_malformed');
  });
});

describe('messages', () => {
  test('ping/pong with nonces, JSON and MessagePack', async () => {
    const j = await welcomed();
    for (const nonce of ['abc', 42, -1.5, true, null]) {
      j.send({ type: 'ping', nonce });
      assert.deepEqual(await j.nextOf('pong'), { type: 'pong', nonce });
    }
    j.send({ type: 'ping' });
    assert.deepEqual(await j.nextOf('pong'), { type: 'pong' });
    done(j);
    const m = await welcomed({ protocol: MSGPACK_P });
    for (const nonce of ['n\u00e9', 42, 2.5, false]) {
      m.send({ type: 'ping', nonce });
      assert.deepEqual(await m.nextOf('pong'), { type: 'pong', nonce });
    }
    done(m);
  });

  test('subscribing to an unknown subscription answers unknown_subscription with ref', async () => {
    for (const protocol of [JSON_P, MSGPACK_P]) {
      const c = await welcomed({ protocol });
      c.send({ type: 'subscribe', id: 'sub-1', subscription: 'rtsub_ws_test_never_defined', params: {} });
      const e = await c.nextOf('error');
      assert.equal(e.code, 'unknown_subscription', `${protocol}: ${e.message}`);
      assert.equal(e.ref, 'sub-1');
      // the id is free again
      c.send({ type: 'subscribe', id: 'sub-1', subscription: 'rtsub_ws_test_never_defined', params: {} });
      assert.equal((await c.nextOf('error')).code, 'unknown_subscription');
      done(c);
    }
  });

  test('duplicate_id and too_many_subscriptions', { todo: 'needs a defined subscription (evaluate.c); covered once the subscription tests define one' }, () => {});

  test('unsubscribe of an unknown id answers bad_field with ref', async () => {
    const c = await welcomed();
    c.send({ type: 'unsubscribe', id: 'nope' });
    const e = await c.nextOf('error');
    assert.equal(e.code, 'bad_field');
    assert.equal(e.ref, 'nope');
    done(c);
  });

  test('bad messages answer errors and the connection stays usable', async () => {
    const c = await welcomed();
    const cases = [
      ['{not json', 'bad_message'],
      ['[1,2]', 'bad_message'],
      [JSON.stringify({ type: 'dance' }), 'unknown_type'],
      [JSON.stringify({ nope: 1 }), 'bad_field'],
      [JSON.stringify({ type: 'subscribe', id: 5, subscription: 'x' }), 'bad_field'],
      [JSON.stringify({ type: 'subscribe', id: 'x'.repeat(65), subscription: 'x' }), 'bad_field'],
    ];
    for (const [text, code] of cases) {
      c.send(text);
      const e = await c.nextOf('error');
      assert.equal(e.code, code, text);
      assert.equal(typeof e.message, 'string');
    }
    c.send({ type: 'ping', nonce: 'still here' });
    assert.equal((await c.nextOf('pong')).nonce, 'still here');
    done(c);
  });

  test('a frame of the other format closes 4400; so does auth after welcome', async () => {
    const j = await welcomed();
    j.ws.send(mpEncode({ type: 'ping' }), { binary: true });
    assert.deepEqual(await j.closed(), { code: 4400, reason: 'binary frame on rtsub.v1.json' });
    const m = await welcomed({ protocol: MSGPACK_P });
    m.ws.send(JSON.stringify({ type: 'ping' }));
    assert.deepEqual(await m.closed(), { code: 4400, reason: 'text frame on rtsub.v1.msgpack' });
    const a = await welcomed();
    a.send({ type: 'auth', token: await token() });
    assert.equal((await a.closed()).code, 4400);
  });

  test('a message over rtsub.max_message_size closes 1009 (plain, fragmented, compressed)', async () => {
    const big = JSON.stringify({ type: 'ping', nonce: 'x'.repeat(2 * 1024 * 1024) });
    const c = await welcomed();
    c.ws.send(big);
    assert.equal((await c.closed()).code, 1009);
    // fragmented: four 600 kB frames
    const f = await welcomed();
    const part = Buffer.from(big).subarray(0, 600 * 1024);
    for (let i = 0; i < 4; i++) f.ws.send(part, { binary: false, fin: i === 3 });
    assert.equal((await f.closed()).code, 1009);
    const z = await welcomed({ pmd: true });
    z.ws.send(big);
    assert.equal((await z.closed()).code, 1009);
    // a fragmented message under the limit is fine
    const ok = await welcomed();
    const msg = Buffer.from(JSON.stringify({ type: 'ping', nonce: 'y'.repeat(500 * 1024) }));
    const third = Math.ceil(msg.length / 3);
    for (let i = 0; i < 3; i++)
      ok.ws.send(msg.subarray(i * third, (i + 1) * third), { binary: false, fin: i === 2 });
    assert.equal((await ok.nextOf('pong')).nonce.length, 500 * 1024);
    done(ok);
  });

  test('rate limit: rate_limited, then 4008 after 3 seconds over', async () => {
    await settings({ 'rtsub.max_messages_per_second': '20' });
    try {
      const c = await welcomed();
      assert.equal(c.welcome.limits.maxMessagesPerSecond, 20);
      // wait for the start of a second, then 30 pings at once
      await sleep(1000 - (Date.now() % 1000) + 20);
      for (let i = 0; i < 30; i++) c.send({ type: 'ping', nonce: i });
      let pongs = 0;
      let limited = null;
      for (;;) {
        const m = await c.next(2000).catch(() => null);
        if (!m) break;
        if (m.type === 'pong') pongs++;
        if (m.type === 'error') limited = m;
        if (pongs + (limited ? 1 : 0) >= 21) break;
      }
      assert.equal(limited?.code, 'rate_limited');
      assert.equal(pongs, 20);
      // a quiet second resets it: the connection works
      await sleep(1500);
      c.send({ type: 'ping', nonce: 'after' });
      assert.equal((await c.nextOf('pong')).nonce, 'after');
      // flooding three seconds in a row closes 4008
      const flood = setInterval(() => {
        if (c.ws.readyState === WebSocket.OPEN) for (let i = 0; i < 30; i++) c.send({ type: 'ping' });
      }, 100);
      try {
        assert.deepEqual(await c.closed(8000), { code: 4008, reason: 'rate_limited' });
      } finally {
        clearInterval(flood);
      }
    } finally {
      await settings({ 'rtsub.max_messages_per_second': null });
    }
  });
});

describe('token lifetime and heartbeats', () => {
  before(async () => settings({ 'rtsub.jwt_leeway': '1s' }));
  after(async () => settings({ 'rtsub.jwt_leeway': null }));

  test('the connection closes 4401 token_expired when exp passes', async () => {
    const c = await welcomed({ tok: await token({ exp: now() + 2 }) });
    const t0 = Date.now();
    assert.deepEqual(await c.closed(8000), { code: 4401, reason: 'token_expired' });
    assert.ok(Date.now() - t0 >= 1000);
  });

  test('refresh extends the connection; other roles and bad tokens are refused', async () => {
    const c = await welcomed({ tok: await token({ exp: now() + 2 }) });
    const exp = now() + 120;
    c.send({ type: 'refresh', token: await token({ exp }) });
    assert.deepEqual(await c.nextOf('refreshed'), { type: 'refreshed', exp });
    // another role
    c.send({ type: 'refresh', token: await token({ role: 'postgres' }) });
    assert.equal((await c.nextOf('error')).code, 'forbidden');
    // an invalid token: error, the old one stays valid
    c.send({ type: 'refresh', token: await token({ exp: now() - 3600 }) });
    assert.equal((await c.nextOf('error')).code, 'token_expired');
    await sleep(4500);   // past the first token's exp + leeway
    c.send({ type: 'ping', nonce: 'alive' });
    assert.equal((await c.nextOf('pong')).nonce, 'alive');
    done(c);
  });

  test('heartbeats arrive on idle connections', async () => {
    await settings({ 'rtsub.heartbeat_interval': '500ms' });
    try {
      for (const protocol of [JSON_P, MSGPACK_P]) {
        const c = await welcomed({ protocol });
        assert.equal(c.welcome.heartbeatMs, 500);
        const t0 = Date.now();
        const hb = await c.next(3000);
        assert.equal(hb.type, 'heartbeat');
        assert.match(hb.at, EVENT_ID);
        assert.ok(Date.now() - t0 >= 300, 'not before the interval');
        const hb2 = await c.next(3000);
        assert.equal(hb2.type, 'heartbeat');
        done(c);
      }
    } finally {
      await settings({ 'rtsub.heartbeat_interval': null });
    }
  });
});

describe('operations', () => {
  test('an ERROR while handling one session does not affect another',
    { skip: 'no safe way to provoke an ERROR from a client; every message handler runs under PG_TRY and answers `internal`' },
    () => {});

  test('metrics count WebSocket messages and sessions', async () => {
    const before = await metric('rtsub_messages_received_total');
    const sentBefore = await metric('rtsub_messages_sent_total');
    const c = await welcomed();
    c.send({ type: 'ping' });
    await c.nextOf('pong');
    assert.ok(await metric('rtsub_messages_received_total') >= before + 1);
    assert.ok(await metric('rtsub_messages_sent_total') >= sentBefore + 2);
    assert.ok(await metric('rtsub_ws_sessions_open') >= 1);
    for (const name of ['rtsub_ws_sessions_accepted_total', 'rtsub_ws_sessions_refused_total',
      'rtsub_ws_auth_failures_total', 'rtsub_ws_slow_consumers_total'])
      await metric(name);
    done(c);
  });

  test('the audit log records connections and refusals', async (t) => {
    const log = process.env.RTSUB_SERVER_LOG;
    if (!log || !fs.existsSync(log)) {
      t.skip('RTSUB_SERVER_LOG not available');
      return;
    }
    await settings({ 'rtsub.audit_log': 'on' });
    try {
      const c = await welcomed();
      c.send({ type: 'subscribe', id: 'audit-1', subscription: 'rtsub_ws_test_never_defined' });
      await c.nextOf('error');
      done(c);
      await connect({ tok: 'garbage' });
      await sleep(300);
      const text = fs.readFileSync(log, 'utf8');
      assert.match(text, /LOG:  rtsub: connection accepted: 127\.0\.0\.1 role "rtsub_ws_test_role"/);
      assert.match(text, /LOG:  rtsub: connection refused from 127\.0\.0\.1: 401 token_malformed/);
      assert.match(text, /LOG:  rtsub: subscribe denied: .*"rtsub_ws_test_never_defined" id "audit-1": unknown_subscription/);
    } finally {
      await settings({ 'rtsub.audit_log': null });
    }
  });

  test('a stopping server closes its sessions with 1001, then comes back', async () => {
    const clients = [await welcomed(), await welcomed({ protocol: MSGPACK_P }), await welcomed({ pmd: true })];
    const pid = (await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'")).rows[0].pid;
    await db.query('SELECT pg_terminate_backend($1)', [pid]);
    for (const c of clients) {
      const closed = await c.closed(5000);
      assert.equal(closed.code, 1001);
    }
    const up = await db.query('SELECT rtsub.wait_until_running(20000) AS up');
    assert.equal(up.rows[0].up, true);
    const again = await welcomed();
    assert.equal(again.welcome.epoch, clients[0].welcome.epoch, 'the epoch survives a worker restart');
    done(again);
  });
});
