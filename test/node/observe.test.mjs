// test/node/observe.test.mjs — SQL observability of the rtsub server with
// real clients (ws, eventsource-free fetch for SSE, jose): the views
// rtsub.connections and rtsub.active_subscriptions and rtsub.stats()
// describe exactly the clients connected right now, their subscriptions and
// what was decoded, evaluated and delivered.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import { encode, decode } from '@msgpack/msgpack';

let db;
let port;
let secret;
const ROLE = 'rt_obs_user';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function token(claims = {}) {
  return new jose.SignJWT({ role: ROLE, ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(new TextEncoder().encode(secret));
}

// a WebSocket client: resolves after welcome; next(pred) waits for a message
async function connect(claims, format = 'json') {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, `rtsub.v1.${format}`, {
    headers: { Authorization: `Bearer ${await token(claims)}` },
  });
  const inbox = [];
  ws.on('message', (d) => inbox.push(format === 'msgpack' ? decode(d) : JSON.parse(d.toString())));
  const c = {
    ws,
    inbox,
    send: (m) => ws.send(format === 'msgpack' ? encode(m) : JSON.stringify(m)),
    async next(pred, what, ms = 5000) {
      const end = Date.now() + ms;
      for (;;) {
        const i = inbox.findIndex(pred);
        if (i >= 0) return inbox.splice(i, 1)[0];
        if (Date.now() > end) assert.fail(`timed out waiting for ${what}: ${JSON.stringify(inbox)}`);
        await sleep(20);
      }
    },
  };
  await c.next((m) => m.type === 'welcome', 'welcome');
  return c;
}

async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const connections = async () => (await db.query(
  'SELECT * FROM rtsub.connections WHERE role = $1 ORDER BY id', [ROLE])).rows;

before(async () => {
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(10000) AS up')).rows[0].up, true);
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}') THEN CREATE ROLE ${ROLE}; END IF;
    END $$`);
  await db.query('DROP TABLE IF EXISTS obs_items CASCADE');
  await db.query('CREATE TABLE obs_items (id int PRIMARY KEY, v text)');
  await db.query(`GRANT SELECT ON obs_items TO ${ROLE}`);
  await db.query("SELECT rtsub.publish('obs_items')");
  await db.query(`SELECT rtsub.create_subscription('obs_all', 'obs_items', roles => '{${ROLE}}')`);
});

after(async () => {
  await db.query('DROP TABLE IF EXISTS obs_items CASCADE');
  await db.end();
});

test('rtsub.connections and rtsub.active_subscriptions list exactly the clients connected now', async () => {
  assert.deepEqual(await connections(), [], 'no client yet');
  const a = await connect({ sub: 'alice' }, 'json');
  const b = await connect({ sub: 'bob' }, 'msgpack');
  a.send({ type: 'subscribe', id: 'a1', subscription: 'obs_all' });
  await a.next((m) => m.type === 'subscribed', 'subscribed a1');
  b.send({ type: 'subscribe', id: 'b1', subscription: 'obs_all' });
  b.send({ type: 'subscribe', id: 'b2', subscription: 'obs_all' });
  await b.next((m) => m.type === 'subscribed' && m.id === 'b1', 'subscribed b1');
  await b.next((m) => m.type === 'subscribed' && m.id === 'b2', 'subscribed b2');

  const rows = await connections();
  assert.equal(rows.length, 2);
  const [ra, rb] = rows;
  assert.deepEqual([ra.user, ra.transport, ra.format, ra.subscriptions, ra.state], ['alice', 'websocket', 'json', 1, 'open']);
  assert.deepEqual([rb.user, rb.transport, rb.format, rb.subscriptions], ['bob', 'websocket', 'msgpack', 2]);
  assert.equal(ra.remote_addr, '127.0.0.1');
  assert.ok(ra.token_expires_at instanceof Date && ra.token_expires_at > new Date());
  assert.ok(Number(ra.messages_sent) >= 2, 'welcome and subscribed were sent');

  const subs = (await db.query(
    'SELECT connection_id, id, subscription, "table"::text AS t, state, "user" FROM rtsub.active_subscriptions WHERE role = $1 ORDER BY connection_id, id',
    [ROLE])).rows;
  assert.deepEqual(subs.map((s) => [s.id, s.subscription, s.t, s.state, s.user]), [
    ['a1', 'obs_all', 'obs_items', 'live', 'alice'],
    ['b1', 'obs_all', 'obs_items', 'live', 'bob'],
    ['b2', 'obs_all', 'obs_items', 'live', 'bob'],
  ]);
  assert.equal(String(subs[0].connection_id), String(ra.id));

  // delivery shows in the counters of the connection and of the server
  const s0 = (await db.query('SELECT * FROM rtsub.stats()')).rows[0];
  await db.query("INSERT INTO obs_items SELECT i, 'x' FROM generate_series(1, 10) i");
  for (let i = 0; i < 10; i++) await a.next((m) => m.type === 'change', `change ${i}`);
  for (let i = 0; i < 20; i++) await b.next((m) => m.type === 'change', `change ${i}`);
  const s1 = await until(async () => {
    const r = (await db.query('SELECT * FROM rtsub.stats()')).rows[0];
    return Number(r.changes_delivered) - Number(s0.changes_delivered) >= 30 ? r : null;
  }, 5000, 'stats');
  assert.equal(Number(s1.changes_decoded) - Number(s0.changes_decoded), 10, '10 changes decoded');
  assert.equal(Number(s1.changes_evaluated) - Number(s0.changes_evaluated), 30, '10 changes x 3 subscriptions');
  assert.equal(Number(s1.changes_delivered) - Number(s0.changes_delivered), 30);
  assert.ok(Number(s1.lag_bytes) >= 0);
  assert.ok(s1.window_start <= s1.decoded_upto, 'the window starts before what is decoded');
  const after = await connections();
  assert.ok(Number(after[0].messages_sent) >= Number(ra.messages_sent) + 10);
  assert.ok(Number(after[0].bytes_sent) > Number(ra.bytes_sent));

  // unsubscribing and closing are reflected at once
  b.send({ type: 'unsubscribe', id: 'b2' });
  await b.next((m) => m.type === 'unsubscribed', 'unsubscribed');
  assert.equal((await connections())[1].subscriptions, 1);
  a.ws.close();
  b.ws.close();
  await until(async () => (await connections()).length === 0, 5000, 'no client');
});

test('an SSE stream is listed with transport sse', async () => {
  const ac = new AbortController();
  const res = await fetch(`http://127.0.0.1:${port}/v1/sse?subscription=obs_all&access_token=${await token({ sub: 'carol' })}`,
    { signal: ac.signal });
  assert.equal(res.status, 200);
  const rows = await until(async () => {
    const r = await connections();
    return r.length === 1 ? r : null;
  }, 5000, 'the stream');
  assert.deepEqual([rows[0].user, rows[0].transport, rows[0].format, rows[0].subscriptions], ['carol', 'sse', 'json', 1]);
  ac.abort();
  await until(async () => (await connections()).length === 0, 5000, 'the stream to go');
});

test('the views and stats are for rtsub_admin, not PUBLIC', async () => {
  await assert.rejects(db.query(`SET ROLE ${ROLE}; SELECT * FROM rtsub.connections`), /permission denied/);
  await db.query('RESET ROLE');
  await assert.rejects(db.query(`SET ROLE ${ROLE}; SELECT * FROM rtsub.stats()`), /permission denied/);
  await db.query('RESET ROLE');
});

test('rtsub.audit_table records connections and subscribes in rtsub.audit_log', async () => {
  await db.query('ALTER SYSTEM SET rtsub.audit_table = on');
  await db.query('SELECT pg_reload_conf()');
  try {
    await sleep(300);
    const t0 = (await db.query('SELECT now() AS t')).rows[0].t;
    // refused at the handshake: a malformed token
    const bad = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, 'rtsub.v1.json', { headers: { Authorization: 'Bearer abc' } });
    await new Promise((r) => { bad.on('error', r); bad.on('close', r); });
    const c = await connect({ sub: 'dave' });
    c.send({ type: 'subscribe', id: 'ok', subscription: 'obs_all' });
    await c.next((m) => m.type === 'subscribed', 'subscribed');
    c.send({ type: 'subscribe', id: 'no', subscription: 'obs_never_defined' });
    await c.next((m) => m.type === 'error', 'error');
    c.ws.close();
    const rows = await until(async () => {
      const r = (await db.query('SELECT event, detail FROM rtsub.audit_log WHERE at >= $1 ORDER BY id', [t0])).rows;
      return r.length >= 4 ? r : null;
    }, 5000, 'four audit rows');
    const events = rows.map((r) => r.event);
    assert.deepEqual(events.slice(0, 4), ['connection refused', 'connection accepted', 'subscribe granted', 'subscribe denied']);
    assert.match(rows[0].detail, /401 token_malformed/);
    assert.match(rows[2].detail, /"obs_all" id "ok"/);
    assert.match(rows[3].detail, /"obs_never_defined" id "no": unknown_subscription/);
  } finally {
    await db.query('ALTER SYSTEM RESET rtsub.audit_table');
    await db.query('SELECT pg_reload_conf()');
  }
});
