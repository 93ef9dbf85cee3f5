// Unit tests of the client's parts: event ids, the row set (keys, key
// changes, snapshot diffs), backoff, the SSE parser, the write queue
// (priorities, order per row, retries with backoff, conflict policies), and
// the protocol handling against an in-process mock server (_mock.mjs):
// snapshots in chunks, dedup of identical subscriptions, resume after a
// dropped connection, duplicates, pacing within the rate limit, reset of
// an open subscription, epoch change, the heartbeat watchdog, MessagePack,
// SSE with Last-Event-ID.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  compareEventIds, maxEventId, RowSet, backoffDelay, SseParser, WriteQueue, createClient, MemoryStore,
} from '../src/index.js';
import { mockServer } from './_mock.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(pred, ms = 5000, what = 'a condition') {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
const ids = (v) => v.rows().map((r) => r.id).join(',');

test('event ids compare by LSN as a 64-bit number, then position', { timeout: 60000 }, () => {
  assert.ok(compareEventIds('0/A:0', '0/9:5') > 0);
  assert.ok(compareEventIds('1/0:0', '0/FFFFFFFF:9') > 0);
  assert.ok(compareEventIds('0/1A2B3C8:3', '0/1A2B3C8:10') < 0);
  assert.equal(compareEventIds('0/1A:2', '0/1a:2'), 0);
  assert.equal(maxEventId(null, '0/1:0'), '0/1:0');
  assert.equal(maxEventId('0/2:0', '0/1:7'), '0/2:0');
});

test('row set: keys from old key columns, key changes, snapshot diffs keep versions', { timeout: 60000 }, () => {
  const rs = new RowSet(['org', 'id']);
  assert.equal(rs.applyChange({ op: 'insert', row: { org: 1, id: 1, t: 'a' }, event: '0/1:0' }).op, 'insert');
  const u = rs.applyChange({ op: 'update', row: { org: 1, id: 2, t: 'a' }, old: { org: 1, id: 1 }, event: '0/2:0' });
  assert.deepEqual([u.op, u.prevKey, u.key], ['update', '[1,1]', '[1,2]'], 'a primary key change moves the row');
  assert.equal(rs.size, 1);
  assert.equal(rs.applyChange({ op: 'delete', row: null, old: { org: 9, id: 9 }, event: '0/3:0' }), null,
    'deleting an unknown row changes nothing');
  rs.applyChange({ op: 'insert', row: { org: 1, id: 3, t: 'c' }, event: '0/4:0' });
  const next = new Map([['[1,2]', { row: { org: 1, id: 2, t: 'a' }, event: '0/9:0' }],
    ['[1,5]', { row: { org: 1, id: 5, t: 'e' }, event: '0/9:0' }]]);
  const ops = rs.replace(next);
  assert.deepEqual(ops.map((o) => `${o.op}${o.key}`).sort(), ['delete[1,3]', 'insert[1,5]']);
  assert.equal(rs.map.get('[1,2]').event, '0/9:0');
});

test('backoff grows exponentially with jitter within [ceiling/2, ceiling], capped', { timeout: 60000 }, () => {
  for (let a = 0; a < 12; a++) {
    const ceiling = Math.min(8000, 100 * 2 ** a);
    for (const r of [0, 0.5, 0.999]) {
      const d = backoffDelay(a, { base: 100, max: 8000, random: () => r });
      assert.ok(d >= ceiling / 2 - 1 && d <= ceiling, `attempt ${a}: ${d}`);
    }
  }
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, { base: 100 })));
  assert.ok(spread.size > 10, 'jittered');
});

test('SSE parser: events, ids, comments, CRLF, split chunks, multi-line data', { timeout: 60000 }, () => {
  const evs = [];
  const p = new SseParser((e) => evs.push(e));
  p.push('event: welcome\r\ndata: {"a"');
  p.push(':1}\r\n\r\n: hb 0/1:0\n\nid: 0/2:0@ab\nevent: change\ndata: x\ndata: y\n');
  p.push('\n');
  assert.deepEqual(evs, [{ event: 'welcome', data: '{"a":1}', id: null },
    { event: 'change', data: 'x\ny', id: '0/2:0@ab' }]);
});

function fakeView(rows) {
  const m = new Map(Object.entries(rows));
  return {
    onConflict: null,
    serverVersion: (k) => m.get(k)?.version ?? null,
    serverRow: (k) => m.get(k) ?? null,
    set: (k, r) => m.set(k, r),
  };
}

test('write queue: priority order, one row in its own order, retries with backoff', { timeout: 60000 }, async () => {
  const sent = [];
  let fail = 2;
  const q = new WriteQueue({
    write: async (m) => {
      if (m.data === 'flaky' && fail-- > 0) throw new Error('network');
      sent.push(m.data);
    },
    backoff: { base: 20, max: 100 },
  });
  q.setOnline(false);
  const all = [
    q.add({ op: 'update', subKey: 's', key: '[1]', patch: {}, data: 'low-1', priority: 'low' }).done,
    q.add({ op: 'update', subKey: 's', key: '[2]', patch: {}, data: 'normal-2' }).done,
    q.add({ op: 'update', subKey: 's', key: '[1]', patch: {}, data: 'critical-1', priority: 'critical' }).done,
    q.add({ op: 'custom', data: 'high', priority: 'high' }).done,
    q.add({ op: 'custom', data: 'flaky', priority: 'critical' }).done,
  ];
  await sleep(50);
  assert.deepEqual(sent, [], 'nothing while offline');
  q.setOnline(true);
  await Promise.all(all);
  // flaky (critical) fails twice and backs off; meanwhile the others go in
  // priority order; critical-1 waits for low-1, an earlier write to row 1,
  // which takes the highest priority of the writes to its row
  // (low-1 goes first as critical: critical-1 waits for it)
  assert.deepEqual(sent.filter((d) => d !== 'flaky'), ['low-1', 'critical-1', 'high', 'normal-2']);
  assert.ok(sent.includes('flaky'));
  assert.throws(() => q.add({ op: 'custom', priority: 'urgent' }), /unknown priority/);
});

test('write queue: conflict policies by row version', { timeout: 60000 }, async () => {
  const run = async (policy, onConflict, server = { id: 1, a: 'A2', b: 'b', version: 2 }) => {
    const view = fakeView({ '[1]': server });
    view.onConflict = onConflict ?? null;
    const sent = [];
    const q = new WriteQueue({ write: async (m) => sent.push(m.patch), viewOf: () => view });
    const { done, entry } = q.add({ op: 'update', subKey: 's', key: '[1]', checkVersion: true, policy,
      base: { id: 1, a: 'a', b: 'b', version: 1 }, baseVersion: 1, patch: { b: 'B-local' } });
    return { q, done, entry, sent, view };
  };
  let r = await run('lww');
  await r.done;
  assert.deepEqual(r.sent, [{ id: 1, a: 'a', b: 'B-local', version: 1 }], 'lww: the whole row as the writer saw it');
  r = await run('merge');
  await r.done;
  assert.deepEqual(r.sent, [{ b: 'B-local' }], 'merge: only the changed fields');
  r = await run('manual', ({ server, local }) => ({ ...local, a: server.a + '!' }));
  await r.done;
  assert.deepEqual(r.sent, [{ b: 'B-local', a: 'A2!' }], 'manual: the callback decides');
  r = await run('manual', () => null);
  assert.equal((await r.done).status, 'dropped');
  r = await run('manual', () => undefined);
  await until(() => r.entry.status === 'conflict', 1000, 'parked');
  assert.equal(r.q.resolve(r.entry.id, { b: 'fixed' }), true);
  await r.done;
  assert.deepEqual(r.sent, [{ b: 'fixed' }]);
  // merge with a clashing field and a callback
  const seen = [];
  r = await run('merge', (info) => { seen.push(info); return { b: 'cb' }; }, { id: 1, a: 'a', b: 'B-server', version: 3 });
  await r.done;
  assert.equal(seen.length, 1, 'a field changed on both sides goes to the callback');
  assert.deepEqual(r.sent, [{ b: 'cb' }]);
  // no conflict when the version is unchanged
  const view = fakeView({ '[1]': { id: 1, version: 1 } });
  const sent = [];
  const q = new WriteQueue({ write: async (m) => sent.push(m.patch), viewOf: () => view });
  await q.add({ op: 'update', subKey: 's', key: '[1]', checkVersion: true, policy: 'lww', base: { id: 1, version: 1 }, baseVersion: 1, patch: { x: 1 } }).done;
  assert.deepEqual(sent, [{ x: 1 }]);
});

// ------------------------------------------------------------ against the mock server

const mocks = [];
const clients = [];
after(() => { for (const c of clients) c.close(); for (const m of mocks) m.close(); });
async function setup(opts = {}, mockOpts = {}) {
  const mock = await mockServer(mockOpts);
  mocks.push(mock);
  const client = createClient({ url: mock.url, token: 'tok', WebSocket, backoff: { base: 50, max: 400 }, ...opts });
  clients.push(client);
  return { mock, client };
}

for (const format of ['json', 'msgpack']) {
  test(`mock/${format}: snapshot in chunks becomes the view at live; changes after; identical subscriptions share one`, { timeout: 60000 }, async () => {
    const { mock, client } = await setup({ format }, { chunkRows: 2 });
    for (let i = 1; i <= 5; i++) mock.commit(['insert', { id: i, org: i % 2, t: `r${i}` }]);
    const a = client.subscribe('s', { org: 1 });
    const b = client.subscribe('s', { org: 1 });
    const events = [];
    b.on('insert', (r) => events.push(`i${r.id}`));
    await Promise.all([a.ready, b.ready]);
    assert.equal(ids(a), '1,3,5');
    assert.equal(ids(b), '1,3,5');
    assert.equal(mock.subscribes().length, 1, 'one server subscription for two views');
    assert.equal(mock.subscribes()[0].snapshot, true);
    mock.commit(['insert', { id: 7, org: 1 }], ['update', { id: 2, org: 1, t: 'in' }]);
    mock.commit(['update', { id: 1, org: 0 }]);
    await until(() => ids(b) === '2,3,5,7', 2000, 'changes');
    assert.deepEqual(events, ['i1', 'i3', 'i5', 'i7', 'i2']);
    a.unsubscribe();
    await sleep(50);
    assert.equal(mock.state.received.filter((m) => m.type === 'unsubscribe').length, 0, 'b still uses it');
    b.unsubscribe();
    await until(() => mock.state.received.some((m) => m.type === 'unsubscribe'), 2000, 'unsubscribe');
  });
}

test('mock: a dropped connection resumes after the last event; missed changes arrive once', { timeout: 60000 }, async () => {
  const { mock, client } = await setup();
  mock.commit(['insert', { id: 1, org: 1 }]);
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  mock.commit(['insert', { id: 2, org: 1 }]);
  await until(() => v.get(2), 2000, 'row 2');
  const last = v.last;
  const inserts = [];
  v.on('insert', (r) => inserts.push(r.id));
  mock.dropAll();
  await sleep(5);
  mock.commit(['insert', { id: 3, org: 1 }]);
  await until(() => v.get(3), 3000, 'row 3');
  const resumes = mock.subscribes().filter((m) => m.resume);
  assert.equal(resumes.length, 1);
  assert.deepEqual(resumes[0].resume, { epoch: '00000000000000aa', after: last });
  assert.deepEqual(inserts, [3]);
  assert.equal(client.info().stats.resumed, 1);
});

test('mock: a change delivered twice (at or before the resume point) is applied once', { timeout: 60000 }, async () => {
  const { mock, client } = await setup();
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  const seen = [];
  v.on('insert', (r) => seen.push(`insert:${r.id}`));
  v.on('update', (r) => seen.push(`update:${r.id}:${r.t}`));
  mock.commit(['insert', { id: 1, org: 1, t: 'a' }]);
  mock.commit(['update', { id: 1, org: 1, t: 'b' }]);
  await until(() => seen.length === 2, 2000, 'two changes');
  mock.replayLast();
  mock.commit(['update', { id: 1, org: 1, t: 'c' }]);
  await until(() => seen.length === 3, 2000, 'the third change');
  assert.deepEqual(seen, ['insert:1', 'update:1:b', 'update:1:c']);
  assert.equal(client.info().stats.duplicates, 1);
});

test('mock: subscribing many at once stays within the server\'s message rate limit', { timeout: 60000 }, async () => {
  const { mock, client } = await setup({}, { maxMessagesPerSecond: 5 });
  mock.commit(['insert', { id: 1, org: 3 }]);
  const views = [];
  for (let org = 0; org < 12; org++) views.push(client.subscribe('s', { org }));
  await Promise.all(views.map((v) => v.ready));
  assert.equal(mock.state.dropped ?? 0, 0, 'no message dropped by the server');
  assert.equal(mock.subscribes().length, 12);
  assert.equal(ids(views[3]), '1');
});

test('mock/sse: snapshot, changes, and a dropped stream resumed with Last-Event-ID', { timeout: 60000 }, async () => {
  const { mock, client } = await setup({ transport: 'sse' });
  mock.commit(['insert', { id: 1, org: 1 }], ['insert', { id: 2, org: 2 }]);
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  assert.equal(ids(v), '1');
  assert.equal(mock.subscribes()[0].snapshot, true);
  mock.commit(['insert', { id: 3, org: 1 }]);
  await until(() => v.get(3), 2000, 'row 3');
  const last = v.last;
  mock.dropAll();
  await sleep(5);
  mock.commit(['update', { id: 1, org: 1, t: 'x' }]);
  await until(() => v.get(1).t === 'x', 3000, 'the change made while away');
  const again = mock.subscribes().at(-1);
  assert.equal(again.lastEventId, `${last}@00000000000000aa`, 'Last-Event-ID: <event id>@<epoch>');
  assert.equal(client.info().stats.resumed, 1);
  assert.equal(client.info().stats.snapshots, 1);
  assert.equal(ids(v), '1,3');
});

test('mock: kick() reconnects when a due reconnect timer did not fire (throttled), not before', { timeout: 60000 }, async () => {
  const { mock, client } = await setup({ backoff: { base: 400, max: 400 } });
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  const engine = client.engine;
  mock.dropAll();
  await until(() => engine.status === 'connecting' && engine.timers.reconnect, 2000, 'a scheduled reconnect');
  clearTimeout(engine.timers.reconnect);       // as a throttled background tab's timer
  assert.equal(engine.kick(), false, 'not before the backoff delay');
  await sleep(450);
  assert.equal(engine.kick(), true);
  await until(() => v.live && engine.status === 'open', 2000, 'reconnected');
  assert.equal(engine.stats.connects, 2);
});

test('mock: reset of an open subscription takes a new snapshot transparently', { timeout: 60000 }, async () => {
  const { mock, client } = await setup();
  mock.commit(['insert', { id: 1, org: 1 }], ['insert', { id: 2, org: 1 }]);
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  const seen = [];
  v.on('reset', (r) => seen.push(`reset:${r}`));
  v.on('delete', (r) => seen.push(`delete:${r.id}`));
  v.on('insert', (r) => seen.push(`insert:${r.id}`));
  v.on('live', () => seen.push('live'));
  // rows change while the server cannot tell this client
  mock.silence(true);
  mock.commit(['delete', { id: 1, org: 1 }], ['insert', { id: 3, org: 1 }]);
  mock.silence(false);
  mock.resetAll('beyond_window');
  await until(() => seen.includes('live'), 2000, 'live after the reset');
  assert.deepEqual(seen, ['reset:beyond_window', 'delete:1', 'insert:3', 'live']);
  assert.equal(ids(v), '2,3');
  assert.equal(mock.subscribes().length, 2);
  assert.equal(mock.subscribes()[1].resume, undefined, 'no resume after a reset');
});

test('mock: a new epoch on reconnect resets, then a snapshot; the watchdog notices a silent server', { timeout: 60000 }, async () => {
  const { mock, client } = await setup();
  mock.commit(['insert', { id: 1, org: 1 }]);
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  let resets = 0;
  v.on('reset', () => resets++);
  mock.newEpoch('00000000000000bb');
  mock.silence(true);                   // heartbeatMs 1000: the watchdog fires after 10 s at the latest
  const t0 = Date.now();
  await until(() => client.info().stats.connects >= 2, 15000, 'a reconnect after silence');
  mock.silence(false);
  await until(() => resets === 1 && v.live, 5000, 'reset + snapshot');
  assert.ok(Date.now() - t0 >= 5000, 'not before the watchdog time');
  assert.equal(v.epoch, '00000000000000bb');
  assert.equal(ids(v), '1');
});

test('mock: the store keeps rows and resume point; a later client resumes from it', { timeout: 60000 }, async () => {
  const store = new MemoryStore();
  const { mock, client } = await setup({ store });
  mock.commit(['insert', { id: 1, org: 1 }]);
  const v = client.subscribe('s', { org: 1 });
  await v.ready;
  mock.commit(['insert', { id: 2, org: 1 }]);
  await until(() => v.get(2), 2000, 'row 2');
  client.close();
  mock.commit(['update', { id: 1, org: 1, t: 'x' }]);
  const c2 = createClient({ url: mock.url, token: 'tok', WebSocket, store });
  clients.push(c2);
  let cached = null;
  const v2 = c2.subscribe('s', { org: 1 }, { onCache: () => { cached = ids(v2); } });
  await until(() => cached, 1000, 'cache');
  assert.equal(cached, '1,2', 'the last session\'s rows, before the server answers');
  await v2.ready;
  assert.equal(v2.get(1).t, 'x');
  assert.deepEqual(mock.subscribes().at(-1).resume, { epoch: '00000000000000aa', after: v.last });
});
