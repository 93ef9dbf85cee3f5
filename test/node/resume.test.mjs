// test/node/resume.test.mjs — resuming after a disconnect (docs/protocol.md,
// "Snapshots and resuming" and "Server-Sent Events"; issue 4 §2 and §4)
// against the shared cluster's rtsub server:
//
// - WebSocket `resume` (JSON and MessagePack) and SSE `Last-Event-ID`
//   (`<event id>@<epoch>`), each dropped at random moments while a writer
//   writes: over all connections, exactly the committed rows arrive, none
//   lost, none twice, event ids strictly increasing; a resumed `subscribed`
//   has `resumed: true` and `at` = the id resumed from; `live` follows.
// - resuming after `live.at` of a snapshot;
// - the server worker restarted (SIGTERM; the postmaster starts it again):
//   WebSocket clients resume, EventSource reconnects by itself with
//   Last-Event-ID, the epoch stays, nothing lost or duplicated;
// - a resume beyond the window (rtsub.resume_window_size lowered, or
//   rtsub.resume_window lowered and waited out) gets `reset`
//   `beyond_window`, and the subscription is not opened — unless the
//   subscribe asked for a snapshot, which then follows;
// - a wrong epoch gets `reset` `epoch_changed` (with snapshot: a fresh
//   one); a malformed Last-Event-ID is a 400 bad_field.
//
// Rows are insert-only (res_log, seq = bigserial), so the expected stream
// of a subscriber is the set of rows of its group committed after it
// subscribed. Randomized: the seed is printed; RTSUB_SEED=<seed> repeats.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  sleep, EVENT_ID, ROLE, rng, seedFromEnv, eid, connectDb, serverInfo, settings, token, until,
  wsClient, sseUrl, sseRaw, sseEventSource, writers, changesOf, assertIncreasing, short,
  Resumer, assertExact,
} from './_exact.mjs';

const SUB = 'exact_res';
let db;
let srv;
const clients = [];
const resumers = [];

before(async () => {
  db = await connectDb();
  srv = await serverInfo(db);
  await settings(db, { 'rtsub.resume_window': null, 'rtsub.resume_window_size': null });
  await db.query('DROP TABLE IF EXISTS res_log CASCADE');
  await db.query('CREATE TABLE res_log (seq bigserial PRIMARY KEY, g int NOT NULL, pad text)');
  await db.query("INSERT INTO res_log (g, pad) SELECT 1 + i % 2, 'before' FROM generate_series(1, 600) i");
  await db.query(`GRANT SELECT ON res_log TO ${ROLE}`);
  await db.query("SELECT rtsub.publish('res_log')");
  await db.query(`SELECT rtsub.create_subscription('${SUB}', 'res_log',
      filter => 'g = params.g', params => '{"g": "integer"}', roles => '{${ROLE}}')`);
});

after(async () => {
  for (const c of clients) c.terminate();
  for (const r of resumers) r.drop();
  try {
    await settings(db, { 'rtsub.resume_window': null, 'rtsub.resume_window_size': null }, 0);
    await db.query('DROP TABLE IF EXISTS res_log CASCADE');
  } finally {
    await db.end();
  }
});

const maxSeq = async () => Number((await db.query('SELECT coalesce(max(seq), 0) AS m FROM res_log')).rows[0].m);
const seqsOf = async (g, after = 0) =>
  (await db.query('SELECT seq FROM res_log WHERE g = $1 AND seq > $2 ORDER BY seq', [g, after])).rows.map((x) => String(x.seq));

// a writer step: one row, or a transaction of 2–20 rows, of groups 1 and 2
async function logStep(c, r) {
  const n = r.next() < 0.7 ? 1 : r.int(2, 20);
  await c.query(`INSERT INTO res_log (g, pad) SELECT 1 + (random() < 0.3)::int, repeat('x', $1)
                 FROM generate_series(1, $2)`, [r.int(0, 200), n]);
}

// rows with seq as a string key (bigserial: JSON number, msgpack int)
const key = (row) => String(row.seq);

// a sentinel row of group g: once a subscriber has it, it has everything
// committed before
async function sentinel(g, subs) {
  const seq = String((await db.query("INSERT INTO res_log (g, pad) VALUES ($1, 'sentinel') RETURNING seq", [g])).rows[0].seq);
  for (const r of subs) {
    await until(() => r.events.some((e) => key(e.row) === seq), `the sentinel at ${r.kind}`, 30000);
  }
}

function exact(r, expected, what) {
  for (const e of r.events) e.row.seq = key(e.row);
  for (const row of r.rows) row.seq = key(row);
  assertExact(r, expected, what);
}

test('resume after random disconnects while a writer writes: WS JSON, WS MessagePack, SSE Last-Event-ID', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  console.log(`# resume test seed ${seed}`);
  const r = rng(seed);
  const start = await maxSeq();
  const tok = await token(srv.secret, { sub: 'resumer' });
  const subs = [
    new Resumer({ kind: 'ws-json', port: srv.port, base: srv.base, tok, subscription: SUB, params: { g: 1 } }),
    new Resumer({ kind: 'ws-msgpack', port: srv.port, base: srv.base, tok, subscription: SUB, params: { g: 1 }, snapshot: true, chunkRows: 50 }),
    new Resumer({ kind: 'sse-raw', port: srv.port, base: srv.base, tok, subscription: SUB, params: { g: 1 } }),
  ];
  resumers.push(...subs);
  for (const s of subs) {
    const m = await s.open();
    assert.equal(m.type, 'subscribed', `${s.kind}: ${short(m)}`);
  }
  await subs[1].client.wait((m) => m.type === 'live', 30000, 'live after the snapshot');
  const w = writers(1, logStep, { seed, pauseMs: [0, 3] });
  const DROPS = 8;
  try {
    await Promise.all(subs.map(async (s) => {
      const rr = rng(seed + s.kind.length * 101);
      for (let i = 0; i < DROPS; i++) {
        await sleep(rr.int(100, 700));
        s.drop();
        await sleep(rr.int(0, 400));
        const m = await s.open();
        assert.equal(m.type, 'subscribed', `${s.kind}, resume ${i + 1} from ${s.sessions.at(-1).resumeFrom}: ${short(m)}`);
        assert.equal(m.resumed, true, `${s.kind}: resumed`);
      }
    }));
    await sleep(r.int(100, 500));
  } finally {
    await w.stop();
  }
  assert.equal(w.errors, 0, `writer errors: ${w.lastError}`);
  await sentinel(1, subs);
  for (const s of subs) {
    // the last resumed connection ended its catch-up with live
    await s.client.wait((m) => m.type === 'live' && m.id === s.id, 10000, `${s.kind}: live after resuming`);
    const want = s.snapshot ? await seqsOf(1) : await seqsOf(1, start);
    exact(s, want, `${s.kind} (seed ${seed})`);
    assert.equal(s.resets.length, 0, `${s.kind}: no reset`);
    t.diagnostic(`${s.kind}: ${s.sessions.length} connections, ${s.rows.length} snapshot rows, ${s.events.length} changes`);
  }
  for (const s of subs) s.drop();
});

test('resume after live.at: exactly the rows committed while away', async () => {
  for (const format of ['json', 'msgpack']) {
    const tok = await token(srv.secret);
    const c = await wsClient({ port: srv.port, tok, format });
    clients.push(c);
    c.send({ type: 'subscribe', id: 'a', subscription: SUB, params: { g: 2 }, snapshot: true });
    const live = await c.wait((m) => m.type === 'live' && m.id === 'a', 30000, 'live');
    c.terminate();
    const start = await maxSeq();
    await db.query("INSERT INTO res_log (g, pad) SELECT 2, 'away' || i FROM generate_series(1, 25) i");
    await db.query("INSERT INTO res_log (g, pad) SELECT 1, 'other group' FROM generate_series(1, 5)");
    const c2 = await wsClient({ port: srv.port, tok, format });
    clients.push(c2);
    c2.send({ type: 'subscribe', id: 'a', subscription: SUB, params: { g: 2 }, resume: { epoch: c.welcome.epoch, after: live.at } });
    const sub = await c2.next((m) => m.id === 'a' || m.ref === 'a', 10000, 'subscribed');
    assert.equal(sub.type, 'subscribed', short(sub));
    assert.equal(sub.resumed, true);
    assert.equal(sub.snapshot, false);
    assert.equal(sub.at, live.at);
    const live2 = await c2.wait((m) => m.type === 'live' && m.id === 'a', 10000, 'live after the catch-up');
    const evs = changesOf(c2.log, 'a');
    const before = evs.filter((e) => c2.log.indexOf(e) < c2.log.indexOf(live2));
    assert.deepEqual(before.map((e) => String(e.row.seq)), await seqsOf(2, start), `${format}: the 25 rows, in order, before live`);
    assertIncreasing(evs, format);
    assert.ok(eid(evs[0].event) > eid(live.at));
    assert.ok(eid(live2.at) >= eid(evs.at(-1).event));
    c2.close();
  }
});

test('the server worker restarts (SIGTERM): WebSocket resumes, EventSource reconnects with Last-Event-ID', async (t) => {
  const seed = seedFromEnv() + 1;
  const start = await maxSeq();
  const tok = await token(srv.secret, { sub: 'restart' });
  const pid0 = Number((await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'")).rows[0].pid);
  const wsr = new Resumer({ kind: 'ws-json', port: srv.port, base: srv.base, tok, subscription: SUB, params: { g: 1 } });
  resumers.push(wsr);
  assert.equal((await wsr.open()).type, 'subscribed');
  const es = sseEventSource(sseUrl(srv.base, { subscription: SUB, params: { g: 1 }, tok }));
  clients.push(es);
  await es.wait((m) => m.type === 'subscribed', 10000, 'EventSource subscribed');
  const w = writers(1, logStep, { seed, pauseMs: [1, 5] });
  try {
    // both have changes (so EventSource has a lastEventId) before the worker goes
    await until(() => wsr.events.length > 20 && changesOf(es.log, 'sse').length > 20, 'changes before the restart', 20000);
    process.kill(pid0, 'SIGTERM');
    await until(async () => {
      const res = await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'");
      return res.rowCount === 1 && Number(res.rows[0].pid) !== pid0;
    }, 'a new server worker', 20000, 200);
    assert.equal((await db.query('SELECT rtsub.wait_until_running(20000) AS up')).rows[0].up, true);
    // the WebSocket client reconnects and resumes (retrying while the worker starts)
    await wsr.client.closed;
    await until(async () => {
      try { const m = await wsr.open(); assert.equal(m.type, 'subscribed', short(m)); return true; } catch (err) {
        if (err.code === 'ERR_ASSERTION') throw err;
        return false;
      }
    }, 'the WebSocket client to resume', 30000, 300);
    // EventSource reconnects by itself (every 3 s) with Last-Event-ID
    await es.wait((m) => m.type === 'subscribed' && m.resumed === true, 30000, 'EventSource to resume');
    await sleep(500);
  } finally {
    await w.stop();
  }
  assert.equal(w.errors, 0, `writer errors: ${w.lastError}`);
  await sentinel(1, [wsr]);
  const want = await seqsOf(1, start);
  exact(wsr, want, 'WebSocket over a worker restart');
  assert.equal(wsr.resets.length, 0, 'no reset');
  const last = want.at(-1);
  await es.wait((m) => changesOf([m], 'sse').some((e) => String(e.row.seq) === last), 30000, 'EventSource: the sentinel');
  const welcomes = es.log.filter((m) => m.type === 'welcome');
  assert.ok(welcomes.length >= 2, 'EventSource reconnected');
  assert.equal(new Set(welcomes.map((m) => m.epoch)).size, 1, 'the epoch stays over a worker restart');
  assert.equal(es.log.filter((m) => m.type === 'reset').length, 0, 'no reset');
  const evs = changesOf(es.log, 'sse');
  assertIncreasing(evs, 'EventSource');
  assert.deepEqual(evs.map((e) => String(e.row.seq)), want, 'EventSource: every row once, in order');
  for (const m of es.log.filter((x) => x.type === 'change')) assert.equal(m.sseId, `${m.event}@${welcomes[0].epoch}`);
  t.diagnostic(`EventSource: ${welcomes.length} connections, ${evs.length} changes; WebSocket: ${wsr.sessions.length} connections`);
  es.close();
  wsr.drop();
});

// subscribes g=3, receives one change; returns { tok, epoch, first }
async function firstEvent(format = 'json') {
  const tok = await token(srv.secret, { sub: 'window' });
  const c = await wsClient({ port: srv.port, tok, format });
  clients.push(c);
  c.send({ type: 'subscribe', id: 'w', subscription: SUB, params: { g: 3 } });
  assert.equal((await c.next((m) => m.id === 'w' || m.ref === 'w', 10000, 'subscribed')).type, 'subscribed');
  await db.query("INSERT INTO res_log (g, pad) VALUES (3, 'first')");
  const e = await c.next((m) => m.type === 'change' && m.id === 'w', 10000, 'the first change');
  c.terminate();
  return { tok, epoch: c.welcome.epoch, first: e.event };
}

// after a reset without snapshot: no subscription is open for that id
async function assertNotOpened(c, id) {
  await db.query("INSERT INTO res_log (g, pad) VALUES (3, 'after reset')");
  await sleep(700);
  assert.deepEqual(c.pending.filter((m) => m.id === id || m.ref === id), [], 'nothing more for the id after the reset');
  c.send({ type: 'subscribe', id, subscription: SUB, params: { g: 3 } });
  const m = await c.next((x) => x.id === id || x.ref === id, 10000, 'a new subscribe with the same id');
  assert.equal(m.type, 'subscribed', `the id is free again: ${short(m)}`);
  c.send({ type: 'unsubscribe', id });
  await c.next((x) => x.type === 'unsubscribed' && x.id === id, 10000, 'unsubscribed');
}

// a fresh snapshot follows the reset: subscribed, chunks, live == SELECT g=3
async function assertFreshSnapshot(c, id) {
  const sub = await c.next((m) => m.id === id || m.ref === id, 10000, 'subscribed after the reset');
  assert.equal(sub.type, 'subscribed', short(sub));
  assert.equal(sub.snapshot, true);
  assert.equal(sub.resumed, false);
  const live = await c.wait((m) => m.type === 'live' && m.id === id, 60000, 'live after the fresh snapshot');
  const chunks = c.log.filter((m) => m.type === 'snapshot' && m.id === id);
  chunks.forEach((m, i) => { assert.equal(m.chunk, i); assert.equal(m.last, i === chunks.length - 1); });
  const got = chunks.flatMap((m) => m.rows).map((row) => String(row.seq));
  const evs = changesOf(c.log, id).filter((e) => c.log.indexOf(e) < c.log.indexOf(live)).map((e) => String(e.row.seq));
  assert.deepEqual([...got, ...evs].sort((a, b) => Number(a) - Number(b)), await seqsOf(3), 'the fresh snapshot is the view');
}

test('a resume beyond rtsub.resume_window_size gets reset beyond_window (WS and SSE, with and without snapshot)', async () => {
  await settings(db, { 'rtsub.resume_window_size': '1MB' });
  try {
    const { tok, epoch, first } = await firstEvent();
    // 4 MB of changes after the first event: the window keeps 1 MB
    for (let i = 0; i < 8; i++) {
      await db.query("INSERT INTO res_log (g, pad) SELECT 3, repeat(md5(i::text), 32) FROM generate_series(1, 500) i");
    }
    await sleep(500);
    for (const format of ['json', 'msgpack']) {
      const c = await wsClient({ port: srv.port, tok, format });
      clients.push(c);
      c.send({ type: 'subscribe', id: 'w', subscription: SUB, params: { g: 3 }, resume: { epoch, after: first } });
      const m = await c.next((x) => x.id === 'w' || x.ref === 'w', 10000, 'the answer to the resume');
      assert.deepEqual({ type: m.type, id: m.id, reason: m.reason }, { type: 'reset', id: 'w', reason: 'beyond_window' }, short(m));
      await assertNotOpened(c, 'w');
      c.send({ type: 'subscribe', id: 'w2', subscription: SUB, params: { g: 3 }, snapshot: true, resume: { epoch, after: first } });
      const m2 = await c.next((x) => x.id === 'w2' || x.ref === 'w2', 10000, 'the answer to the resume with snapshot');
      assert.deepEqual({ type: m2.type, reason: m2.reason }, { type: 'reset', reason: 'beyond_window' }, short(m2));
      await assertFreshSnapshot(c, 'w2');
      c.close();
    }
    // SSE: Last-Event-ID beyond the window
    const url = sseUrl(srv.base, { subscription: SUB, params: { g: 3 }, tok });
    const s = await sseRaw(url, { 'Last-Event-ID': `${first}@${epoch}` });
    assert.equal(s.status, 200);
    const reset = await s.next((m) => m.type === 'reset', 10000, 'reset');
    assert.equal(reset.reason, 'beyond_window');
    assert.equal(reset.id, 'sse');
    await until(() => s.ended, 'the server to end the stream after the reset (no snapshot asked)', 5000);
    assert.equal(s.log.filter((m) => m.type === 'subscribed' || m.type === 'change').length, 0, 'no subscription opened');
    const s2 = await sseRaw(sseUrl(srv.base, { subscription: SUB, params: { g: 3 }, tok, extra: { snapshot: 'true' } }),
      { 'Last-Event-ID': `${first}@${epoch}` });
    clients.push(s2);
    assert.equal((await s2.next((m) => m.type === 'reset', 10000, 'reset')).reason, 'beyond_window');
    await assertFreshSnapshot(s2, 'sse');
    s2.close();
  } finally {
    await settings(db, { 'rtsub.resume_window_size': null });
  }
});

test('a resume beyond rtsub.resume_window (time) gets reset beyond_window', async () => {
  await settings(db, { 'rtsub.resume_window': '1s' });
  try {
    const { tok, epoch, first } = await firstEvent('msgpack');
    await db.query("INSERT INTO res_log (g, pad) SELECT 3, 'missed' FROM generate_series(1, 10)");
    await sleep(2500);   // the missed rows are older than the 1 s window now
    await db.query("INSERT INTO res_log (g, pad) SELECT 3, 'newer' FROM generate_series(1, 10)");
    await sleep(300);
    const c = await wsClient({ port: srv.port, tok, format: 'msgpack' });
    clients.push(c);
    c.send({ type: 'subscribe', id: 'w', subscription: SUB, params: { g: 3 }, resume: { epoch, after: first } });
    const m = await c.next((x) => x.id === 'w' || x.ref === 'w', 10000, 'the answer to the resume');
    assert.deepEqual({ type: m.type, reason: m.reason }, { type: 'reset', reason: 'beyond_window' }, short(m));
    c.close();
  } finally {
    await settings(db, { 'rtsub.resume_window': null });
  }
});

test('a resume within the window after the window settings are back works', async () => {
  const { tok, epoch, first } = await firstEvent();
  const start = await maxSeq();
  await db.query("INSERT INTO res_log (g, pad) SELECT 3, 'missed' FROM generate_series(1, 10)");
  const c = await wsClient({ port: srv.port, tok });
  clients.push(c);
  c.send({ type: 'subscribe', id: 'w', subscription: SUB, params: { g: 3 }, resume: { epoch, after: first } });
  const m = await c.next((x) => x.id === 'w' || x.ref === 'w', 10000, 'subscribed');
  assert.equal(m.type, 'subscribed', short(m));
  assert.equal(m.resumed, true);
  await c.wait((x) => x.type === 'live' && x.id === 'w', 10000, 'live');
  assert.deepEqual(changesOf(c.log, 'w').map((e) => String(e.row.seq)), await seqsOf(3, start));
  c.close();
});

test('a wrong epoch gets reset epoch_changed (WS and SSE, with a fresh snapshot when asked)', async () => {
  const { tok, epoch, first } = await firstEvent();
  const wrong = epoch.replace(/./, (ch) => (ch === '0' ? '1' : '0'));
  assert.notEqual(wrong, epoch);
  for (const format of ['json', 'msgpack']) {
    const c = await wsClient({ port: srv.port, tok, format });
    clients.push(c);
    c.send({ type: 'subscribe', id: 'w', subscription: SUB, params: { g: 3 }, resume: { epoch: wrong, after: first } });
    const m = await c.next((x) => x.id === 'w' || x.ref === 'w', 10000, 'the answer');
    assert.deepEqual({ type: m.type, id: m.id, reason: m.reason }, { type: 'reset', id: 'w', reason: 'epoch_changed' }, short(m));
    await assertNotOpened(c, 'w');
    c.send({ type: 'subscribe', id: 'w2', subscription: SUB, params: { g: 3 }, snapshot: true, resume: { epoch: wrong, after: first } });
    const m2 = await c.next((x) => x.id === 'w2' || x.ref === 'w2', 10000, 'the answer with snapshot');
    assert.deepEqual({ type: m2.type, reason: m2.reason }, { type: 'reset', reason: 'epoch_changed' }, short(m2));
    await assertFreshSnapshot(c, 'w2');
    c.close();
  }
  const s = await sseRaw(sseUrl(srv.base, { subscription: SUB, params: { g: 3 }, tok }), { 'Last-Event-ID': `${first}@${wrong}` });
  assert.equal(s.status, 200);
  assert.equal((await s.next((m) => m.type === 'reset', 10000, 'reset')).reason, 'epoch_changed');
  await until(() => s.ended, 'the end of the stream', 5000);
  const s2 = await sseRaw(sseUrl(srv.base, { subscription: SUB, params: { g: 3 }, tok, extra: { snapshot: 'true' } }),
    { 'Last-Event-ID': `${first}@${wrong}` });
  clients.push(s2);
  assert.equal((await s2.next((m) => m.type === 'reset', 10000, 'reset')).reason, 'epoch_changed');
  await assertFreshSnapshot(s2, 'sse');
  s2.close();
});

test('a malformed Last-Event-ID is refused with 400 bad_field', async () => {
  const { tok, epoch, first } = await firstEvent();
  const url = sseUrl(srv.base, { subscription: SUB, params: { g: 3 }, tok });
  for (const bad of [first, 'garbage', `${first}@`, `@${epoch}`, `${first}@xyz`, `0/0@${epoch}`, `${first}@${epoch}@${epoch}`]) {
    const s = await sseRaw(url, { 'Last-Event-ID': bad });
    assert.equal(s.status, 400, `Last-Event-ID ${bad}: ${s.text}`);
    assert.equal(s.body?.error?.code, 'bad_field', `Last-Event-ID ${bad}: ${s.text}`);
  }
  // and a well-formed one resumes
  const ok = await sseRaw(url, { 'Last-Event-ID': `${first}@${epoch}` });
  clients.push(ok);
  assert.equal(ok.status, 200);
  const sub = await ok.next((m) => m.type === 'subscribed', 10000, 'subscribed');
  assert.equal(sub.resumed, true);
  assert.equal(sub.at, first);
  assert.match(sub.at, EVENT_ID);
  ok.close();
});
