// test/node/delivery.test.mjs — subscribe's delivery options with real
// clients (ws, @msgpack/msgpack, fetch for SSE, jose): batching (batchSize
// and throttleMs: several events in one `changes` message, in order, bounded
// by a count and a delay), priority between a connection's subscriptions
// when its queue backs up, and includeMetadata.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import { encode, decode } from '@msgpack/msgpack';

let db;
let port;
let secret;
const ROLE = 'rt_delivery_user';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clients = [];

async function token(claims = {}) {
  return new jose.SignJWT({ role: ROLE, ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(new TextEncoder().encode(secret));
}

// deflate: offer permessage-deflate (then lws frames each message), or not
// (then the server frames messages itself and writes many per send)
async function connect(format = 'json', { deflate = true } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, `rtsub.v1.${format}`, {
    headers: { Authorization: `Bearer ${await token()}` },
    perMessageDeflate: deflate,
  });
  clients.push(ws);
  const inbox = [];
  ws.on('message', (d) => inbox.push(format === 'msgpack' ? decode(d) : JSON.parse(d.toString())));
  const c = {
    ws,
    inbox,
    send: (m) => ws.send(format === 'msgpack' ? encode(m) : JSON.stringify(m)),
    async next(pred, what, ms = 10000) {
      const end = Date.now() + ms;
      for (;;) {
        const i = inbox.findIndex(pred);
        if (i >= 0) return inbox.splice(i, 1)[0];
        if (Date.now() > end) assert.fail(`timed out waiting for ${what}: ${JSON.stringify(inbox).slice(0, 500)}`);
        await sleep(10);
      }
    },
  };
  await c.next((m) => m.type === 'welcome', 'welcome');
  return c;
}

// event ids in order: compare by LSN (as a number), then position
function idKey(id) {
  const [lsn, pos] = id.split(':');
  const [hi, lo] = lsn.split('/');
  return [BigInt(`0x${hi}`) * 2n ** 32n + BigInt(`0x${lo}`), Number(pos)];
}
function assertIncreasing(ids) {
  for (let i = 1; i < ids.length; i++) {
    const [a, b] = [idKey(ids[i - 1]), idKey(ids[i])];
    assert.ok(a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]), `${ids[i - 1]} < ${ids[i]}`);
  }
}

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
  for (const t of ['dl_a', 'dl_b']) {
    await db.query(`DROP TABLE IF EXISTS ${t} CASCADE`);
    await db.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text)`);
    await db.query(`GRANT SELECT ON ${t} TO ${ROLE}`);
    await db.query(`SELECT rtsub.publish('${t}')`);
    await db.query(`SELECT rtsub.create_subscription('${t}_all', '${t}', roles => '{${ROLE}}')`);
  }
});

after(async () => {
  for (const ws of clients) ws.terminate();
  await db.query('ALTER SYSTEM RESET rtsub.max_send_buffer');
  await db.query('SELECT pg_reload_conf()');
  for (const t of ['dl_a', 'dl_b']) await db.query(`DROP TABLE IF EXISTS ${t} CASCADE`);
  await db.end();
});

for (const [format, deflate] of [['json', true], ['msgpack', true], ['json', false], ['msgpack', false]]) {
  test(`batchSize: a transaction's events in changes messages of at most batchSize, in order (${format}, deflate ${deflate})`, async () => {
    await db.query('TRUNCATE dl_a');
    const c = await connect(format, { deflate });
    c.send({ type: 'subscribe', id: 'b', subscription: 'dl_a_all', batchSize: 5 });
    await c.next((m) => m.type === 'subscribed', 'subscribed');
    await db.query("INSERT INTO dl_a SELECT i, 'v' || i FROM generate_series(1, 12) i");
    const msgs = [];
    let n = 0;
    while (n < 12) {
      const m = await c.next((x) => x.type === 'changes' || x.type === 'change', `events after ${n}`);
      assert.equal(m.type, 'changes', 'batched subscriptions get changes messages');
      assert.equal(m.id, 'b');
      msgs.push(m);
      n += m.events.length;
    }
    assert.deepEqual(msgs.map((m) => m.events.length), [5, 5, 2], 'full batches, then the rest at the end of the transaction');
    const events = msgs.flatMap((m) => m.events);
    assert.deepEqual(events.map((e) => e.row.id), [...Array(12).keys()].map((i) => i + 1));
    for (const e of events) {
      assert.equal(e.op, 'insert');
      assert.equal(e.type, undefined, 'bodies carry no type');
      assert.ok(e.ts);
    }
    assertIncreasing(events.map((e) => e.event));
    c.ws.close();
  });
}

test('throttleMs: events of several transactions wait together, bounded by batchSize', async () => {
  await db.query('TRUNCATE dl_a');
  const c = await connect();
  c.send({ type: 'subscribe', id: 't', subscription: 'dl_a_all', batchSize: 100, throttleMs: 1500, includeMetadata: true });
  await c.next((m) => m.type === 'subscribed', 'subscribed');
  for (let i = 1; i <= 3; i++) await db.query('INSERT INTO dl_a VALUES ($1, $2)', [i, `t${i}`]);
  const m = await c.next((x) => x.type === 'changes', 'the throttled batch');
  assert.deepEqual(m.events.map((e) => e.row.id), [1, 2, 3], 'three transactions in one message');
  assert.deepEqual(m.events.map((e) => e.table), ['public.dl_a', 'public.dl_a', 'public.dl_a'], 'includeMetadata');
  assert.ok(m.events.every((e) => Number.isInteger(e.xid)));
  assert.equal(new Set(m.events.map((e) => e.xid)).size, 3);
  // a batch never waits for more than batchSize events
  c.send({ type: 'subscribe', id: 'u', subscription: 'dl_b_all', batchSize: 2, throttleMs: 10000 });
  await c.next((x) => x.type === 'subscribed' && x.id === 'u', 'subscribed u');
  await db.query("INSERT INTO dl_b VALUES (1, 'x'), (2, 'y')");
  const u = await c.next((x) => x.type === 'changes' && x.id === 'u', 'a full batch without waiting 10 s', 5000);
  assert.equal(u.events.length, 2);
  c.ws.close();
});

test('SSE: batchSize gives changes events whose id is the last event\'s', async () => {
  await db.query('TRUNCATE dl_a');
  const ac = new AbortController();
  const res = await fetch(`http://127.0.0.1:${port}/v1/sse?subscription=dl_a_all&batchSize=10&access_token=${await token()}`,
    { signal: ac.signal });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  const want = async (pred, what) => {
    const end = Date.now() + 10000;
    for (;;) {
      const blocks = text.split('\n\n');
      const hit = blocks.find(pred);
      if (hit) return hit;
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      const { value } = await reader.read();
      text += dec.decode(value, { stream: true });
    }
  };
  const welcome = await want((b) => b.includes('event: subscribed'), 'subscribed');
  const epoch = JSON.parse(text.split('\n\n').find((b) => b.includes('event: welcome')).split('data: ')[1]).epoch;
  assert.ok(welcome);
  await db.query("INSERT INTO dl_a SELECT i, 'v' FROM generate_series(1, 3) i");
  const block = await want((b) => b.includes('event: changes'), 'changes');
  const lines = Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
  const data = JSON.parse(lines.data);
  assert.equal(data.events.length, 3);
  assert.equal(lines.id, `${data.events[2].event}@${epoch}`);
  ac.abort();
});

// without permessage-deflate only: through the extension the queue did not
// back up within the test's bounds in CI (see the session note of issue 3)
for (const deflate of [false]) test(`priority: when a connection's queue backs up, the higher priority subscription is written first (deflate ${deflate})`, async () => {
  await db.query("ALTER SYSTEM SET rtsub.max_send_buffer = '256MB'");
  await db.query('SELECT pg_reload_conf()');
  await sleep(300);
  await db.query('TRUNCATE dl_a, dl_b');
  const c = await connect('json', { deflate });
  c.send({ type: 'subscribe', id: 'low', subscription: 'dl_a_all', priority: 0 });
  c.send({ type: 'subscribe', id: 'high', subscription: 'dl_b_all', priority: 9 });
  await c.next((m) => m.type === 'subscribed' && m.id === 'low', 'subscribed low');
  await c.next((m) => m.type === 'subscribed' && m.id === 'high', 'subscribed high');
  // stop reading: the kernel's buffers fill, then the server's queue
  c.ws._socket.pause();
  // hex, not one letter repeated: permessage-deflate must not shrink it into the kernel's buffers
  await db.query("INSERT INTO dl_a SELECT i, repeat(md5('a' || i), 625) FROM generate_series(1, 1200) i");
  await db.query("INSERT INTO dl_b SELECT i, repeat(md5('b' || i), 625) FROM generate_series(1, 1200) i");
  // both are queued at the server once its queue holds more than the kernel does
  const conn = async () => (await db.query('SELECT queue_bytes FROM rtsub.connections WHERE role = $1', [ROLE])).rows[0];
  const end = Date.now() + 20000;
  while (Number((await conn()).queue_bytes) < 30e6) {
    if (Date.now() > end) assert.fail('the server queue did not back up');
    await sleep(100);
  }
  c.ws._socket.resume();
  const order = [];
  const rows = { low: [], high: [] };
  while (order.length < 2400) {
    const m = await c.next((x) => x.type === 'change', `change ${order.length}`, 30000);
    order.push(m.id);
    rows[m.id].push(m.row.id);
    assert.equal(m.row.v.length, 20000, 'whole messages');
  }
  const ascending = [...Array(1200).keys()].map((i) => i + 1);
  assert.deepEqual(rows.low, ascending, 'every low-priority change once, in order');
  assert.deepEqual(rows.high, ascending, 'every high-priority change once, in order');
  const lastHigh = order.lastIndexOf('high');
  const lastLow = order.lastIndexOf('low');
  assert.ok(lastHigh < lastLow, `all high-priority changes (last at ${lastHigh}) before the last low-priority one (${lastLow})`);
  assert.equal(order[order.length - 1], 'low', 'the low-priority subscription finishes last, though it was written first');
  // within a subscription, order is kept
  c.ws.close();
});
