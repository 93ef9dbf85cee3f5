// test/node/subscribe.test.mjs — subscriptions end to end with real clients
// (ws, @msgpack/msgpack, jose) against the rtsub server of the shared test
// cluster (rtsub.database = postgres, rtsub.port from test/cluster.conf):
// filters with parameters, policies over claims, column privileges,
// move-in / move-out, DELETE visibility, two subscribers with different
// claims receiving different rows, subscribe errors, unsubscribe — in JSON
// and MessagePack.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';
import { encode, decode } from '@msgpack/msgpack';

let db;
let port;
let secret;
const opened = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// a signed token for the test role with the given claims
async function token(claims) {
  const alg = 'HS256';
  return new jose.SignJWT({ role: 'rt_sub_user', ...claims })
    .setProtectedHeader({ alg, typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(new TextEncoder().encode(secret));
}

// connect, wait for welcome; returns a client with send() and next(pred)
async function connect(claims, format = 'json') {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, `rtsub.v1.${format}`, {
    headers: { Authorization: `Bearer ${await token(claims)}` },
  });
  opened.push(ws);
  const inbox = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const msg = format === 'msgpack' ? decode(data) : JSON.parse(data.toString());
    assert.equal(isBinary, format === 'msgpack', 'frame type matches the format');
    inbox.push(msg);
    for (const w of waiters.splice(0)) w();
  });
  const client = {
    ws,
    inbox,
    send(msg) {
      ws.send(format === 'msgpack' ? encode(msg) : JSON.stringify(msg));
    },
    // the first message (removed from the inbox) that matches pred
    async next(pred, timeoutMs = 5000, what = 'a message') {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const i = inbox.findIndex(pred);
        if (i >= 0) return inbox.splice(i, 1)[0];
        const left = deadline - Date.now();
        if (left <= 0) assert.fail(`timed out waiting for ${what}; inbox: ${JSON.stringify(inbox)}`);
        await new Promise((r) => { waiters.push(r); setTimeout(r, left); });
      }
    },
    // all change events for a subscription id that arrive within ms
    async changes(id, ms = 400) {
      await sleep(ms);
      const out = [];
      for (let i = inbox.length - 1; i >= 0; i--)
        if (inbox[i].type === 'change' && inbox[i].id === id) out.unshift(inbox.splice(i, 1)[0]);
      return out;
    },
  };
  await client.next((m) => m.type === 'welcome', 5000, 'welcome');
  return client;
}

// subscribe and wait for the ack (or error)
async function subscribe(client, id, subscription, params) {
  client.send({ type: 'subscribe', id, subscription, params });
  return client.next((m) => (m.type === 'subscribed' || m.type === 'error') && (m.id === id || m.ref === id),
    5000, `subscribed ${id}`);
}

const summary = (evs) => evs.map((e) => `${e.op}:${e.row.id}`).join(' ');

before(async () => {
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  assert.ok(secret, 'test/cluster.conf sets rtsub.jwt_secret');
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(10000) AS up')).rows[0].up, true);
  await db.query('DROP TABLE IF EXISTS sub_tasks CASCADE');
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_sub_user') THEN CREATE ROLE rt_sub_user; END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_sub_other') THEN CREATE ROLE rt_sub_other; END IF;
    END $$`);
  await db.query(`CREATE TABLE sub_tasks (id int PRIMARY KEY, org_id int NOT NULL, title text,
                    owner text, done bool DEFAULT false, secret text)`);
  // column privileges: secret is never readable by the subscriber role
  await db.query('GRANT SELECT (id, org_id, title, owner, done) ON sub_tasks TO rt_sub_user');
  await db.query('GRANT SELECT ON sub_tasks TO rt_sub_other');
  await db.query("SELECT rtsub.publish('sub_tasks', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('org_tasks', 'sub_tasks',
      filter => 'org_id = params.org_id', params => '{"org_id": "integer"}',
      roles => '{rt_sub_user}')`);
  await db.query(`SELECT rtsub.create_subscription('secret_tasks', 'sub_tasks',
      filter => 'secret IS NULL', roles => '{rt_sub_user}')`);
  // tenant isolation from the claims: a row is visible to its own org only
  await db.query(`SELECT rtsub.create_policy('sub_tasks', 'same_org',
      'org_id = (rtsub.claims() ->> ''org'')::int')`);
});

after(async () => {
  for (const ws of opened) ws.terminate();
  await db.query('DROP TABLE IF EXISTS sub_tasks, sub_rls, sub_rls_sublink CASCADE');
  await db.query('DROP FUNCTION IF EXISTS sub_uid()');
  await db.end();
});

for (const format of ['json', 'msgpack']) {
  test(`${format}: filters, policies over claims, columns, move-in/out and deletes`, async () => {
    await db.query('TRUNCATE sub_tasks');
    const alice = await connect({ sub: 'alice', org: 1 }, format);   // org 1 watching org 1
    const bob = await connect({ sub: 'bob', org: 2 }, format);       // org 2 asking for org 1: policy says no
    const carol = await connect({ sub: 'carol', org: 2 }, format);   // org 2 watching org 2

    for (const [c, org] of [[alice, 1], [bob, 1], [carol, 2]]) {
      const ack = await subscribe(c, 's1', 'org_tasks', { org_id: org });
      assert.equal(ack.type, 'subscribed', JSON.stringify(ack));
      assert.match(ack.at, /^[0-9A-F]+\/[0-9A-F]+:\d+$/);
    }

    await db.query(`INSERT INTO sub_tasks VALUES
        (1, 1, 'a', 'alice', false, 'hidden'), (2, 1, 'b', 'bob', false, NULL),
        (3, 2, 'c', 'carol', false, NULL)`);
    await db.query("UPDATE sub_tasks SET title = 'a2' WHERE id = 1");
    await db.query('UPDATE sub_tasks SET org_id = 2 WHERE id = 2');   // moves from org 1 to org 2
    await db.query('DELETE FROM sub_tasks WHERE id = 3');

    const a = await alice.changes('s1');
    assert.equal(summary(a), 'insert:1 insert:2 update:1 delete:2', 'alice sees org 1, then row 2 leaving');
    for (const e of a) {
      assert.ok(!('secret' in e.row), 'a column the role may not read is never sent');
      assert.deepEqual(Object.keys(e.row), ['id', 'org_id', 'title', 'owner', 'done']);
      assert.match(e.event, /^[0-9A-F]+\/[0-9A-F]+:\d+$/);
    }
    assert.equal(a[2].row.title, 'a2');
    assert.equal(a[2].old.title, 'a', 'update carries the old row');
    assert.deepEqual(await bob.changes('s1', 0), [], 'the policy hides org 1 from org 2');
    const c = await carol.changes('s1', 0);
    assert.equal(summary(c), 'insert:3 insert:2 delete:3', 'carol sees org 2, with row 2 moving in');
    assert.equal(c[1].row.org_id, 2);

    // events are in commit order with increasing ids
    const ids = a.map((e) => e.event);
    assert.deepEqual([...ids].sort((x, y) => {
      const p = (s) => { const [lsn, pos] = s.split(':'); const [h, l] = lsn.split('/'); return [parseInt(h, 16), parseInt(l, 16), Number(pos)]; };
      const [x1, x2, x3] = p(x); const [y1, y2, y3] = p(y);
      return x1 - y1 || x2 - y2 || x3 - y3;
    }), ids);

    // unsubscribe stops the stream
    alice.send({ type: 'unsubscribe', id: 's1' });
    await alice.next((m) => m.type === 'unsubscribed' && m.id === 's1', 5000, 'unsubscribed');
    await db.query("INSERT INTO sub_tasks VALUES (4, 1, 'd', 'alice', false, NULL)");
    assert.deepEqual(await alice.changes('s1'), [], 'nothing after unsubscribe');
    for (const cl of [alice, bob, carol]) cl.ws.close();
  });

  test(`${format}: subscribe errors keep the connection usable`, async () => {
    const alice = await connect({ sub: 'alice', org: 1 }, format);
    const cases = [
      ['e1', 'no_such_subscription', { org_id: 1 }, 'unknown_subscription'],
      ['e2', 'org_tasks', { org_id: 'abc' }, 'bad_params'],
      ['e3', 'org_tasks', {}, 'bad_params'],
      ['e4', 'org_tasks', { org_id: 1, extra: 2 }, 'bad_params'],
      ['e5', 'secret_tasks', undefined, 'forbidden'],   // the filter reads a column the role may not
    ];
    for (const [id, name, params, code] of cases) {
      const r = await subscribe(alice, id, name, params);
      assert.equal(r.type, 'error', `${id}: ${JSON.stringify(r)}`);
      assert.equal(r.code, code, `${id}: ${JSON.stringify(r)}`);
      assert.equal(r.ref, id);
    }
    const other = await connect({ sub: 'x', org: 1, role: 'rt_sub_other' }, format);
    const r = await subscribe(other, 'o1', 'org_tasks', { org_id: 1 });
    assert.equal(r.code, 'forbidden', 'a role outside the subscription\'s roles');
    const ok = await subscribe(alice, 'ok', 'org_tasks', { org_id: 1 });
    assert.equal(ok.type, 'subscribed', 'still usable after errors');
    alice.ws.close();
    other.ws.close();
  });
}

test('native row-level security of the table, PostgREST/Supabase style', async () => {
  await db.query('DROP TABLE IF EXISTS sub_rls, sub_rls_sublink CASCADE');
  await db.query('CREATE TABLE sub_rls (id int PRIMARY KEY, owner text, v text)');
  await db.query('GRANT SELECT ON sub_rls TO rt_sub_user');
  // like Supabase's auth.uid(): a SQL function reading the claims setting
  await db.query(`CREATE OR REPLACE FUNCTION sub_uid() RETURNS text LANGUAGE sql STABLE
      AS $$ SELECT current_setting('request.jwt.claims', true)::jsonb ->> 'sub' $$`);
  await db.query('ALTER TABLE sub_rls ENABLE ROW LEVEL SECURITY');
  await db.query('CREATE POLICY own ON sub_rls FOR SELECT TO rt_sub_user USING (owner = sub_uid())');
  await db.query("SELECT rtsub.publish('sub_rls', native_rls => true, replica_identity_full => true)");
  await db.query("SELECT rtsub.create_subscription('rls_all', 'sub_rls')");
  const alice = await connect({ sub: 'alice', org: 1 });
  const bob = await connect({ sub: 'bob', org: 1 });
  assert.equal((await subscribe(alice, 'r', 'rls_all')).type, 'subscribed');
  assert.equal((await subscribe(bob, 'r', 'rls_all')).type, 'subscribed');
  await db.query("INSERT INTO sub_rls VALUES (1, 'alice', 'a'), (2, 'bob', 'b'), (3, 'alice', 'c')");
  await db.query("UPDATE sub_rls SET owner = 'bob' WHERE id = 3");   // moves from alice to bob
  assert.equal(summary(await alice.changes('r')), 'insert:1 insert:3 delete:3');
  assert.equal(summary(await bob.changes('r', 0)), 'insert:2 insert:3');

  // a policy with a subquery cannot be evaluated per change: refused, not ignored
  await db.query('CREATE TABLE sub_rls_sublink (id int PRIMARY KEY, owner text)');
  await db.query('GRANT SELECT ON sub_rls_sublink TO rt_sub_user');
  await db.query('ALTER TABLE sub_rls_sublink ENABLE ROW LEVEL SECURITY');
  await db.query('CREATE POLICY viaq ON sub_rls_sublink FOR SELECT TO rt_sub_user USING (owner IN (SELECT owner FROM sub_rls))');
  await db.query("SELECT rtsub.publish('sub_rls_sublink', native_rls => true)");
  await db.query("SELECT rtsub.create_subscription('rls_sublink', 'sub_rls_sublink')");
  const r = await subscribe(alice, 'q', 'rls_sublink');
  assert.equal(r.code, 'forbidden', JSON.stringify(r));
  assert.match(r.message, /subquery/);
  alice.ws.close();
  bob.ws.close();
});
