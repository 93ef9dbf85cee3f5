// The client in Node (ws) against the rtsub server of the shared test
// cluster: snapshot then changes, the view's events and rows, unsubscribe,
// JSON and MessagePack (SSE: sse.test.mjs); reconnect and resume; a reset (stale epoch)
// answered by a new snapshot; cached rows and resume across clients with one
// store; token refresh before expiry; writes through a write function, with
// conflicts by row version under the three policies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { createClient, MemoryStore, subscriptionKey } from '../src/index.js';
import { server, fixtures, until, sleep, ids } from './_server.mjs';

let S;
const clients = [];
function client(opts = {}) {
  const c = createClient({ url: S.url, token: () => S.token({}), WebSocket, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  S = await server();
  await fixtures(S.db);
});

after(async () => {
  for (const c of clients) c.close();
  await S.db.query('DROP TABLE IF EXISTS rtc_items CASCADE');
  await S.db.end();
});

for (const [transport, format] of [['websocket', 'json'], ['websocket', 'msgpack']]) {
  test(`${transport}/${format}: snapshot, then inserts, updates, deletes in order; unsubscribe`, { timeout: 60000 }, async () => {
    await S.db.query('TRUNCATE rtc_items');
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'other org')`);
    const c = client({ transport, format });
    const events = [];
    const view = c.subscribe('rtc_org', { org: 1 }, {
      onInsert: (r) => events.push(`insert:${r.id}`),
      onUpdate: (r, m) => events.push(`update:${r.id}:${r.title}<-${m.old.title}`),
      onDelete: (r) => events.push(`delete:${r.id}`),
    });
    await view.ready;
    assert.equal(ids(view), '1,2', 'the snapshot holds exactly the subscribed rows');
    assert.equal(view.status, 'synced');
    assert.deepEqual(events, ['insert:1', 'insert:2']);
    events.length = 0;

    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (4, 1, 'd'), (5, 2, 'e')`);
    await S.db.query(`UPDATE rtc_items SET title = 'a2' WHERE id = 1`);
    await S.db.query(`UPDATE rtc_items SET org = 1 WHERE id = 3`);   // moves in
    await S.db.query(`UPDATE rtc_items SET org = 2 WHERE id = 2`);   // moves out
    await S.db.query(`DELETE FROM rtc_items WHERE id = 4`);
    await until(() => events.length >= 5, 10000, `5 events, have ${events}`);
    assert.deepEqual(events, ['insert:4', 'update:1:a2<-a', 'insert:3', 'delete:2', 'delete:4']);
    assert.equal(ids(view), '1,3');
    assert.equal(view.get(1).title, 'a2');
    assert.equal(view.get({ id: 3 }).org, 1);
    assert.match(view.last, /^[0-9A-F]+\/[0-9A-F]+:\d+$/);

    view.unsubscribe();
    await sleep(200);
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (6, 1, 'f')`);
    await sleep(500);
    assert.equal(events.length, 5, 'nothing after unsubscribe');
    c.close();
  });
}

for (const transport of ['websocket']) {
  test(`${transport}: a dropped connection reconnects and resumes after the last event`, { timeout: 60000 }, async () => {
    await S.db.query('TRUNCATE rtc_items');
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a')`);
    const c = client({ transport, backoff: { base: 400, max: 2000 } });
    const view = c.subscribe('rtc_org', { org: 1 });
    await view.ready;
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (2, 1, 'b')`);
    await until(() => view.get(2), 10000, 'row 2');
    const lastBefore = view.last;
    c.reconnect();
    // committed while the client is away
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (3, 1, 'c')`);
    await S.db.query(`UPDATE rtc_items SET title = 'a2' WHERE id = 1`);
    await until(() => view.get(3) && view.get(1).title === 'a2', 15000, 'the changes made while away');
    const st = c.info().stats;
    assert.ok(st.connects >= 2, `reconnected (${JSON.stringify(st)})`);
    assert.equal(st.resumed, 1, `resumed after ${lastBefore} rather than a new snapshot (${JSON.stringify(st)})`);
    assert.equal(st.snapshots, 1, 'one snapshot only: the first');
    assert.equal(ids(view), '1,2,3');
    c.close();
  });
}

test('a refused subscription: error event, ready rejects, phase failed; the connection stays usable', { timeout: 60000 }, async () => {
  const c = client();
  const errors = [];
  const bad = c.subscribe('rtc_org', { org: 'not a number' }, { onError: (e) => errors.push(e.code) });
  await assert.rejects(bad.ready, (e) => e.code === 'bad_params');
  assert.deepEqual(errors, ['bad_params']);
  assert.equal(bad.phase, 'failed');
  const missing = c.subscribe('no_such_subscription', {});
  await assert.rejects(missing.ready, (e) => e.code === 'unknown_subscription');
  const ok = c.subscribe('rtc_org', { org: 1 });
  await ok.ready;
  assert.equal(c.info().stats.connects, 1);
  c.close();
});

test('a reset (the cached resume point names another epoch) is answered by a new snapshot', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'fresh'), (2, 1, 'b')`);
  const store = new MemoryStore();
  const key = subscriptionKey('rtc_org', { org: 1 });
  await store.putSubscription(key, {
    key, name: 'rtc_org', params: { org: 1 }, keyCols: ['id'],
    rows: [['[1]', { id: 1, org: 1, title: 'stale', done: false, version: 1 }, '0/10:0'],
           ['[9]', { id: 9, org: 1, title: 'gone', done: false, version: 1 }, '0/10:0']],
    last: '0/10:0', epoch: '00000000deadbeef', resumable: true,
  });
  const c = client({ store });
  const seen = [];
  const view = c.subscribe('rtc_org', { org: 1 }, {
    onCache: () => seen.push(`cache:${ids(view)}`),
    onReset: (reason) => seen.push(`reset:${reason}`),
    onLive: () => seen.push(`live:${ids(view)}`),
    onDelete: (r) => seen.push(`delete:${r.id}`),
  });
  await view.ready;
  assert.deepEqual(seen.filter((s) => !s.startsWith('delete')), ['cache:1,9', 'reset:epoch_changed', 'live:1,2']);
  assert.ok(seen.includes('delete:9'), 'a cached row the server no longer has is deleted');
  assert.equal(view.get(1).title, 'fresh');
  assert.equal(c.info().stats.resets, 1);
  c.close();
});

test('a new client with the same store shows the cached rows at once and resumes from their last id', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a')`);
  const store = new MemoryStore();
  const c1 = client({ store });
  const v1 = c1.subscribe('rtc_org', { org: 1 });
  await v1.ready;
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (2, 1, 'b')`);
  await until(() => v1.get(2), 10000, 'row 2');
  const last = v1.last;
  c1.close();
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (3, 1, 'c')`);

  const c2 = client({ store });
  let cached = null;
  let cachedLast = null;
  const v2 = c2.subscribe('rtc_org', { org: 1 }, { onCache: () => { cached = ids(v2); cachedLast = v2.last; } });
  await until(() => cached, 2000, 'the cached rows');
  assert.equal(cached, '1,2', 'the rows of the last session, before the server answers');
  assert.equal(cachedLast, last, 'and its resume point');
  await v2.ready;
  assert.equal(ids(v2), '1,2,3');
  assert.equal(c2.info().stats.resumed, 1, 'resumed, no new snapshot');
  assert.equal(c2.info().stats.snapshots, 0);
  c2.close();
});

test('the token is refreshed before it expires; the connection stays open', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  let issued = 0;
  const c = client({ token: () => { issued++; return S.token({}, 3); } });
  let refreshed = 0;
  c.engine.on('refreshed', () => refreshed++);
  const view = c.subscribe('rtc_org', { org: 1 });
  await view.ready;
  await sleep(4500);
  assert.ok(refreshed >= 2, `refreshed ${refreshed} times with 3 s tokens in 4.5 s`);
  assert.ok(issued >= 3, `token provider called ${issued} times`);
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'after refresh')`);
  await until(() => view.get(1), 10000, 'a change after the refreshes');
  assert.equal(c.info().stats.connects, 1, 'one connection throughout');
  c.close();
});

// the write function of an application: an UPDATE with optimistic version bump
function writer(db, log) {
  return async (m) => {
    log.push(m);
    if (m.op === 'update') {
      const cols = Object.keys(m.patch).filter((k) => k !== 'id' && k !== 'version');
      const sets = cols.map((k, i) => `${k} = $${i + 2}`).join(', ');
      await db.query(`UPDATE rtc_items SET ${sets}, version = version + 1 WHERE id = $1`,
        [m.keyValues[0], ...cols.map((k) => m.patch[k])]);
    } else if (m.op === 'insert') {
      await db.query('INSERT INTO rtc_items (id, org, title) VALUES ($1, $2, $3)', [m.row.id, m.row.org, m.row.title]);
    } else if (m.op === 'delete') {
      await db.query('DELETE FROM rtc_items WHERE id = $1', [m.keyValues[0]]);
    }
  };
}

test('writes: optimistic, pending then synced; offline writes replay by priority', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c')`);
  const log = [];
  const c = client({ write: writer(S.db, log), settleMs: 5000 });
  const statuses = [];
  const view = c.subscribe('rtc_org', { org: 1 }, {
    onRowStatus: (s) => statuses.push(`${JSON.parse(s.key)[0]}:${s.status}`),
  });
  await view.ready;
  const p = view.update(1, { title: 'a-local' });
  assert.equal(view.get(1).title, 'a-local', 'shown at once');
  assert.equal(view.rowStatus(1), 'pending');
  assert.equal(view.status, 'pending');
  assert.equal((await p).status, 'written');
  await until(() => view.rowStatus(1) === 'synced', 10000, 'the server change of the write');
  assert.equal(view.serverRow('[1]').title, 'a-local');
  assert.deepEqual(statuses, ['1:pending', '1:synced']);
  assert.equal(view.status, 'synced');

  c.setOnline(false);
  const order = [];
  const w = [
    view.update(2, { title: 'low' }, { priority: 'low' }).then(() => order.push('low')),
    view.update(3, { title: 'normal' }).then(() => order.push('normal')),
    view.insert({ id: 4, org: 1, title: 'critical' }, { priority: 'critical' }).then(() => order.push('critical')),
    view.delete(1, { priority: 'high' }).then(() => order.push('high')),
  ];
  await sleep(300);
  assert.equal(c.writes.size, 4, 'queued while offline');
  assert.equal(ids(view), '2,3,4', 'the queued writes show in the view');
  c.setOnline(true);
  await Promise.all(w);
  assert.deepEqual(order, ['critical', 'high', 'normal', 'low'], 'replayed by priority');
  await until(() => view.status === 'synced', 10000, 'synced');
  assert.equal(ids(view), '2,3,4');
  assert.equal(view.get(2).title, 'low');
  c.close();
});

for (const policy of ['lww', 'merge', 'manual']) {
  test(`writes: a conflict by row version (${policy})`, { timeout: 60000 }, async () => {
    await S.db.query('TRUNCATE rtc_items');
    await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a')`);
    const log = [];
    const conflicts = [];
    const c = client({ write: writer(S.db, log) });
    const view = c.subscribe('rtc_org', { org: 1 }, {
      version: 'version', conflict: policy,
      onConflict: policy === 'manual' ? (info) => { conflicts.push(info); return undefined; } : undefined,
    });
    await view.ready;
    c.setOnline(false);
    const done = view.update(1, { title: 'mine' });
    // meanwhile somebody else changes the row
    await S.db.query(`UPDATE rtc_items SET done = true, version = version + 1 WHERE id = 1`);
    c.setOnline(true);
    if (policy === 'manual') {
      await until(() => view.rowStatus(1) === 'conflict', 10000, 'a parked conflict');
      assert.equal(view.status, 'conflict');
      assert.equal(conflicts.length, 1);
      assert.equal(conflicts[0].server.done, true, 'the callback sees the server row');
      assert.equal(conflicts[0].base.done, false, 'and the row the write was made on');
      assert.deepEqual(conflicts[0].local, { title: 'mine' });
      view.resolveConflict(done.id, { title: 'resolved' });
    }
    const r = await done;
    assert.equal(r.status, 'written');
    const row = (await S.db.query('SELECT title, done FROM rtc_items WHERE id = 1')).rows[0];
    if (policy === 'lww') assert.deepEqual(row, { title: 'mine', done: false }, 'the whole row as written wins');
    if (policy === 'merge') assert.deepEqual(row, { title: 'mine', done: true }, 'both changes kept');
    if (policy === 'manual') assert.deepEqual(row, { title: 'resolved', done: true });
    await until(() => view.status === 'synced', 10000, 'synced');
    c.close();
  });
}
