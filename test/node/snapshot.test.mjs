// test/node/snapshot.test.mjs — subscribe with a snapshot while writers
// write (docs/protocol.md, "Snapshots and resuming"; issue 4 §1 and §4):
// the snapshot's rows plus the stream's changes, applied in order, equal a
// SELECT of the rows the subscriber may see at the end — no gap, no
// duplicate — for 120 subscribes with random timing, random chunk sizes
// and random claims, over WebSocket (JSON and MessagePack) and SSE
// (EventSource). Chunk markers (chunk 0, 1, ..., last) and chunk sizes are
// checked, and `live` closes the catch-up.
//
// The view of a subscriber: snap_items rows with grp = params.g (the
// subscription's filter) and val % 7 <> claims.hide (a policy over the
// claims). Writers (3 connections) insert, update and delete, in
// single-statement and multi-statement transactions; updates move rows in
// and out of both the filter (grp) and the policy (val), and count
// versions in `ver`, so that a change the snapshot already contained is
// caught: every update and delete must carry as `old` exactly the version
// the client holds, every insert must be of a row the client does not
// hold.
//
// Randomized: the seed is printed; RTSUB_SEED=<seed> repeats a run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { encode } from '@msgpack/msgpack';
import {
  sleep, EVENT_ID, EPOCH, ROLE, rng, seedFromEnv, eid, connectDb, serverInfo, token, until,
  wsClient, sseUrl, sseEventSource, writers, changesOf, assertIncreasing, short,
} from './_exact.mjs';

const SUB = 'exact_snap';
const ROUNDS = 12;
const PER_ROUND = 10;
const INITIAL_ROWS = 1500;

let db;
let srv;
const clients = [];
let hiId = INITIAL_ROWS;   // highest id inserted so far (writers pick ids up to it)

before(async () => {
  db = await connectDb();
  srv = await serverInfo(db);
  await db.query('DROP TABLE IF EXISTS snap_items CASCADE');
  await db.query('DROP SEQUENCE IF EXISTS snap_ids');
  await db.query(`CREATE TABLE snap_items (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL,
                    ver int NOT NULL DEFAULT 0, pad text)`);
  await db.query(`CREATE SEQUENCE snap_ids START ${INITIAL_ROWS + 1}`);
  await db.query(`INSERT INTO snap_items (id, grp, val, pad)
                  SELECT i, i % 3, (i * 7919) % 1000, repeat(chr(97 + i % 26), (i * 31) % 300)
                  FROM generate_series(1, ${INITIAL_ROWS}) i`);
  await db.query(`GRANT SELECT ON snap_items TO ${ROLE}`);
  await db.query("SELECT rtsub.publish('snap_items', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('${SUB}', 'snap_items',
      filter => 'grp = params.g', params => '{"g": "integer"}', roles => '{${ROLE}}')`);
  await db.query(`SELECT rtsub.create_policy('snap_items', 'exact_snap_hide',
      'val % 7 <> (rtsub.claims() ->> ''hide'')::int')`);
});

after(async () => {
  for (const c of clients) c.terminate();
  try {
    await db.query('DROP TABLE IF EXISTS snap_items CASCADE');
    await db.query('DROP SEQUENCE IF EXISTS snap_ids');
  } finally {
    await db.end();
  }
});

// one writer transaction: 1 statement, or 2–5 in a transaction (row locks
// taken in id order, so that writers do not deadlock)
async function writeStep(db, r) {
  const n = r.next() < 0.5 ? 1 : r.int(2, 5);
  const ops = [];
  for (let k = 0; k < n; k++) {
    const p = r.next();
    const pad = String.fromCharCode(97 + r.int(0, 25)).repeat(r.int(0, 300));
    if (p < 0.3) ops.push({ op: 'insert', id: null, grp: r.int(0, 2), val: r.int(0, 999), pad });
    else if (p < 0.85) ops.push({ op: 'update', id: r.int(1, hiId), move: r.next() < 0.3, grp: r.int(0, 2), val: r.int(0, 999), pad: r.next() < 0.3 ? pad : null });
    else ops.push({ op: 'delete', id: r.int(1, hiId) });
  }
  ops.sort((a, b) => (a.id ?? Infinity) - (b.id ?? Infinity));
  if (n > 1) await db.query('BEGIN');
  for (const o of ops) {
    if (o.op === 'insert') {
      const res = await db.query(`INSERT INTO snap_items (id, grp, val, pad) VALUES (nextval('snap_ids'), $1, $2, $3)
                                  RETURNING id`, [o.grp, o.val, o.pad]);
      hiId = Math.max(hiId, res.rows[0].id);
    } else if (o.op === 'update') {
      await db.query(`UPDATE snap_items SET grp = CASE WHEN $1 THEN $2 ELSE grp END, val = $3, ver = ver + 1,
                        pad = coalesce($4, pad) WHERE id = $5`, [o.move, o.grp, o.val, o.pad, o.id]);
    } else {
      await db.query('DELETE FROM snap_items WHERE id = $1', [o.id]);
    }
  }
  if (n > 1) await db.query('COMMIT');
}

// the rows a subscriber (g, hide) may see now
async function visible(g, hide) {
  const res = await db.query(`SELECT id, grp, val, ver, pad FROM snap_items
                              WHERE grp = $1 AND val % 7 <> $2 ORDER BY id`, [g, hide]);
  return res.rows;
}

const sizeOf = (format, rows) => (format === 'msgpack' ? encode(rows).length : Buffer.byteLength(JSON.stringify(rows)));

/*
 * Checks one subscriber's messages for its subscription id and applies
 * them: subscribed, snapshot chunks 0..last (nothing else in between),
 * then changes and one live, then changes. Returns the view (id -> row)
 * and counts.
 */
function replay(s) {
  const what = `${s.kind} #${s.n} (g=${s.g} hide=${s.hide} chunkRows=${s.chunkRows} chunkBytes=${s.chunkBytes})`;
  const log = s.client.log;
  const welcomes = log.filter((m) => m.type === 'welcome');
  assert.equal(welcomes.length, 1, `${what}: one welcome, no reconnect`);
  const msgs = log.filter((m) => m.type !== 'welcome' && m.type !== 'heartbeat' && (m.id === s.id || m.ref === s.id));
  assert.ok(msgs.length > 0, `${what}: messages arrived`);
  let i = 0;
  const sub = msgs[i++];
  assert.equal(sub.type, 'subscribed', `${what}: subscribed first: ${short(msgs.slice(0, 3))}`);
  assert.equal(sub.snapshot, true, `${what}: subscribed.snapshot`);
  assert.equal(sub.resumed, false, `${what}: subscribed.resumed`);
  assert.match(sub.at, EVENT_ID);
  assert.equal(sub.epoch, s.epoch, `${what}: subscribed.epoch is the welcome's`);

  const view = new Map();
  const format = s.kind === 'ws-msgpack' ? 'msgpack' : 'json';
  let chunk = 0;
  let snapshotRows = 0;
  for (;;) {
    const m = msgs[i++];
    assert.ok(m, `${what}: the snapshot ended with last: true`);
    assert.equal(m.type, 'snapshot', `${what}: only snapshot chunks until the last one, got ${short(m)}`);
    assert.equal(m.chunk, chunk, `${what}: chunks count from 0`);
    assert.ok(Array.isArray(m.rows), `${what}: rows`);
    assert.ok(m.rows.length <= s.chunkRows, `${what}: chunk ${chunk} has ${m.rows.length} > chunkRows rows`);
    if (!m.last) {
      // a chunk ends after chunkRows rows, or once it holds chunkBytes bytes
      // of rows. The server's byte count is not the client's encoding of the
      // rows exactly: a factor of 2 is allowed either way.
      assert.ok(m.rows.length === s.chunkRows || sizeOf(format, m.rows) >= s.chunkBytes / 2,
        `${what}: chunk ${chunk} ended early: ${m.rows.length} rows, ${sizeOf(format, m.rows)} bytes`);
    }
    if (m.rows.length > 1) {
      assert.ok(sizeOf(format, m.rows.slice(0, -1)) < s.chunkBytes * 2,
        `${what}: chunk ${chunk} went on past chunkBytes: ${sizeOf(format, m.rows)} bytes in ${m.rows.length} rows`);
    }
    if (m.rows.length === 0) assert.ok(m.last && chunk === 0, `${what}: only an empty view has an empty chunk`);
    for (const row of m.rows) {
      assert.ok(!view.has(row.id), `${what}: row ${row.id} twice in the snapshot`);
      view.set(row.id, row);
    }
    snapshotRows += m.rows.length;
    chunk++;
    if (m.last) { assert.equal(m.last, true); break; }
  }

  let live = null;
  let before = 0;
  let after = 0;
  const evs = [];
  for (; i < msgs.length; i++) {
    const m = msgs[i];
    if (m.type === 'live') {
      assert.equal(live, null, `${what}: one live`);
      live = m;
      assert.match(m.at, EVENT_ID);
      assert.equal(m.epoch, s.epoch, `${what}: live.epoch`);
      if (evs.length) {
        assert.ok(eid(m.at) >= eid(evs[evs.length - 1].event),
          `${what}: live.at ${m.at} covers the changes sent before it (last ${evs[evs.length - 1].event})`);
      }
      if (s.kind.startsWith('sse')) assert.equal(m.sseId, `${m.at}@${s.epoch}`, `${what}: SSE id of live`);
      continue;
    }
    const batch = changesOf([m], s.id);
    assert.ok(batch.length > 0 || m.type === 'changes', `${what}: unexpected message ${short(m)}`);
    if (m.type === 'change' && s.kind.startsWith('sse')) {
      assert.equal(m.sseId, `${m.event}@${s.epoch}`, `${what}: SSE id of a change is <event id>@<epoch>`);
    }
    for (const e of batch) {
      assert.match(e.event, EVENT_ID);
      if (live) {
        assert.ok(eid(e.event) > eid(live.at), `${what}: a change after live is after live.at`);
        after++;
      } else before++;
      evs.push(e);
      applyChange(view, e, what);
    }
  }
  assert.ok(live, `${what}: live arrived`);
  assertIncreasing(evs, what);
  return { view, chunks: chunk, snapshotRows, before, after };
}

function applyChange(view, e, what) {
  const key = (e.row ?? e.old).id;
  const at = `${what}: ${e.op} of row ${key} at ${e.event}`;
  if (e.op === 'insert') {
    assert.ok(!view.has(key), `${at}: the client already holds the row (a duplicate: ${short(view.get(key))} then ${short(e.row)})`);
    view.set(key, e.row);
  } else if (e.op === 'update') {
    assert.ok(view.has(key), `${at}: the client does not hold the row (a gap)`);
    assert.deepEqual(e.old, view.get(key), `${at}: old is the version the client holds`);
    assert.ok(e.row.ver > view.get(key).ver, `${at}: a newer version`);
    view.set(key, e.row);
  } else if (e.op === 'delete') {
    assert.ok(view.has(key), `${at}: the client does not hold the row (a gap, or a delete it should not see)`);
    // a delete names the row it removes in old (or row)
    assert.deepEqual(e.old ?? e.row, view.get(key), `${at}: the deleted row is the version the client holds`);
    view.delete(key);
  } else {
    assert.fail(`${at}: unknown op`);
  }
}

// opens one subscriber with a snapshot
async function openSubscriber(s) {
  const tok = await token(srv.secret, { sub: `snap-${s.n}`, hide: s.hide });
  if (s.kind === 'sse') {
    s.kind = 'sse-eventsource';
    s.id = 'sse';
    s.client = sseEventSource(sseUrl(srv.base, {
      subscription: SUB, params: { g: s.g }, tok,
      extra: { snapshot: 'true', chunkRows: s.chunkRows, chunkBytes: s.chunkBytes },
    }));
    clients.push(s.client);
    const w = await s.client.next((m) => m.type === 'welcome', 15000, `welcome of ${s.kind} #${s.n}`);
    s.epoch = w.epoch;
  } else {
    const format = s.kind === 'ws-json' ? 'json' : 'msgpack';
    s.kind = `ws-${format}`;
    s.id = `snap${s.n}`;
    s.client = await wsClient({ port: srv.port, tok, format });
    clients.push(s.client);
    s.epoch = s.client.welcome.epoch;
    s.client.send({ type: 'subscribe', id: s.id, subscription: SUB, params: { g: s.g },
      snapshot: true, chunkRows: s.chunkRows, chunkBytes: s.chunkBytes });
  }
  assert.match(s.epoch, EPOCH);
}

test('snapshot ∪ stream == the visible rows, 120 subscribes while 3 writers write', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (RTSUB_SEED=${seed} repeats this run)`);
  console.log(`# snapshot test seed ${seed}`);
  const r = rng(seed);
  const kinds = ['ws-json', 'ws-msgpack', 'sse'];
  const totals = { subscribes: 0, chunks: 0, snapshotRows: 0, before: 0, after: 0, writes: 0, writeErrors: 0 };
  let n = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const w = writers(3, writeStep, { seed: seed + round, pauseMs: [0, 4] });
    const subs = [];
    const opening = [];
    try {
      await sleep(r.int(0, 200));
      for (let j = 0; j < PER_ROUND; j++) {
        const s = {
          n: n++,
          kind: kinds[(round + j) % kinds.length],
          g: r.int(0, 2),
          hide: r.int(1, 6),            // never 0: the sentinel rows (val 0) are visible to all
          chunkRows: r.next() < 0.2 ? 100000 : r.logInt(1, 2000),
          chunkBytes: r.next() < 0.2 ? 16777216 : r.logInt(1024, 65536),
        };
        subs.push(s);
        const delay = r.int(0, 1500);
        opening.push(sleep(delay).then(() => openSubscriber(s)));
      }
      await Promise.all(opening);
      // every subscriber's catch-up ends with live
      for (const s of subs) {
        await s.client.wait((m) => m.type === 'live' && m.id === s.id, 60000, `live for ${s.kind} #${s.n}`);
      }
      await sleep(r.int(50, 500));
    } finally {
      // no subscriber may open after a failure (after() closes them all)
      await Promise.allSettled(opening);
      await w.stop();
    }
    totals.writes += w.ops;
    totals.writeErrors += w.errors;
    // a sentinel row per group, visible to every subscriber of its group:
    // once it arrived, everything committed before it has
    await db.query(`INSERT INTO snap_items (id, grp, val, pad)
                    SELECT -(${round} * 10 + g), g, 0, 'sentinel' FROM generate_series(0, 2) g`);
    for (const s of subs) {
      const sentinel = -(round * 10 + s.g);
      await s.client.wait((m) => changesOf([m], s.id).some((e) => e.op === 'insert' && e.row.id === sentinel),
        30000, `the sentinel row for ${s.kind} #${s.n}`);
    }
    for (const s of subs) {
      const { view, chunks, snapshotRows, before, after } = replay(s);
      const want = await visible(s.g, s.hide);
      const got = [...view.values()].sort((a, b) => a.id - b.id);
      const wantIds = new Set(want.map((x) => x.id));
      const missing = want.filter((x) => !view.has(x.id)).map((x) => x.id);
      const extra = got.filter((x) => !wantIds.has(x.id)).map((x) => x.id);
      const stale = want.filter((x) => view.has(x.id) && !isDeepStrictEqual(view.get(x.id), x)).map((x) => x.id);
      assert.ok(missing.length + extra.length + stale.length === 0,
        `${s.kind} #${s.n} (seed ${seed}, round ${round}): snapshot ∪ stream != SELECT: ${missing.length} rows missing ` +
        `${missing.slice(0, 20)}, ${extra.length} extra ${extra.slice(0, 20)}, ${stale.length} stale ${stale.slice(0, 20)}`);
      assert.deepEqual(got, want);
      totals.subscribes++;
      totals.chunks += chunks;
      totals.snapshotRows += snapshotRows;
      totals.before += before;
      totals.after += after;
    }
    for (const s of subs) s.client.close();
  }
  t.diagnostic(`checked ${totals.subscribes} subscribes: ${totals.snapshotRows} snapshot rows in ${totals.chunks} chunks, ` +
    `${totals.before} changes before live, ${totals.after} after; ${totals.writes} writer transactions ` +
    `(${totals.writeErrors} rolled back)`);
  assert.equal(totals.subscribes, ROUNDS * PER_ROUND);
  assert.ok(totals.before + totals.after > 0, 'changes were streamed during the snapshots');
});

test('an empty view is one empty last chunk; live follows', async () => {
  const c = await wsClient({ port: srv.port, tok: await token(srv.secret, { hide: 1 }) });
  clients.push(c);
  c.send({ type: 'subscribe', id: 'e', subscription: SUB, params: { g: 99 }, snapshot: true });
  const sub = await c.next((m) => m.id === 'e' || m.ref === 'e', 10000, 'subscribed');
  assert.equal(sub.type, 'subscribed', short(sub));
  assert.equal(sub.snapshot, true);
  const chunk = await c.next((m) => m.id === 'e', 10000, 'the chunk');
  assert.deepEqual({ type: chunk.type, id: chunk.id, chunk: chunk.chunk, rows: chunk.rows, last: chunk.last },
    { type: 'snapshot', id: 'e', chunk: 0, rows: [], last: true });
  const live = await c.next((m) => m.id === 'e', 10000, 'live');
  assert.equal(live.type, 'live');
  assert.equal(live.epoch, c.welcome.epoch);
  // and the stream is live: a row moving into the view arrives
  await db.query("INSERT INTO snap_items (id, grp, val, pad) VALUES (-1000, 99, 0, 'new')");
  const ch = await c.next((m) => m.id === 'e', 10000, 'the insert');
  assert.equal(ch.type, 'change');
  assert.equal(ch.op, 'insert');
  assert.equal(ch.row.id, -1000);
  assert.ok(eid(ch.event) > eid(live.at), 'after live.at');
  await db.query('DELETE FROM snap_items WHERE id = -1000');
  c.close();
});

test('a snapshot without writers: chunkRows 1 gives one row per chunk, in order 0..n', async () => {
  const c = await wsClient({ port: srv.port, tok: await token(srv.secret, { hide: 3 }), format: 'msgpack' });
  clients.push(c);
  const want = await visible(1, 3);
  c.send({ type: 'subscribe', id: 'one', subscription: SUB, params: { g: 1 }, snapshot: true, chunkRows: 1 });
  await c.wait((m) => m.type === 'live' && m.id === 'one', 60000, 'live');
  const chunks = c.log.filter((m) => m.type === 'snapshot' && m.id === 'one');
  assert.equal(chunks.length, want.length, 'one chunk per row');
  chunks.forEach((m, i) => {
    assert.equal(m.chunk, i);
    assert.equal(m.rows.length, 1);
    assert.equal(m.last, i === want.length - 1);
  });
  assert.deepEqual(chunks.map((m) => m.rows[0]).sort((a, b) => a.id - b.id), want);
  assert.deepEqual(changesOf(c.log, 'one'), [], 'no changes: nothing was written');
  c.close();
});

test('chunk sizes out of range are refused with bad_field', async () => {
  const c = await wsClient({ port: srv.port, tok: await token(srv.secret, { hide: 1 }) });
  clients.push(c);
  const cases = [
    ['r0', { chunkRows: 0 }], ['r1', { chunkRows: 100001 }], ['r2', { chunkRows: 'ten' }],
    ['b0', { chunkBytes: 1023 }], ['b1', { chunkBytes: 16777217 }], ['s0', { snapshot: 'yes' }],
  ];
  for (const [id, extra] of cases) {
    c.send({ type: 'subscribe', id, subscription: SUB, params: { g: 1 }, snapshot: true, ...extra });
    const m = await c.next((x) => x.id === id || x.ref === id, 10000, `answer to ${id}`);
    assert.equal(m.type, 'error', `${JSON.stringify(extra)}: ${short(m)}`);
    assert.equal(m.code, 'bad_field', `${JSON.stringify(extra)}: ${short(m)}`);
    assert.equal(m.ref, id);
  }
  c.close();
});

// (last in this file: it has crashed the server — lws asserts
// `!priv->tx.avail_in` in extension-permessage-deflate.c)
test('with permessage-deflate: a snapshot of 3000 rows and the changes after it arrive', async () => {
  await db.query('DROP TABLE IF EXISTS snap_deflate CASCADE');
  await db.query('CREATE TABLE snap_deflate (id int PRIMARY KEY, pad text)');
  await db.query("INSERT INTO snap_deflate SELECT i, repeat(chr(97 + i % 26), 120) FROM generate_series(1, 3000) i");
  await db.query(`GRANT SELECT ON snap_deflate TO ${ROLE}`);
  await db.query("SELECT rtsub.publish('snap_deflate')");
  await db.query(`SELECT rtsub.create_subscription('exact_snap_deflate', 'snap_deflate', roles => '{${ROLE}}')`);
  try {
    for (const format of ['json', 'msgpack']) {
      const c = await wsClient({ port: srv.port, tok: await token(srv.secret, { hide: 1 }), format, deflate: true });
      clients.push(c);
      assert.match(c.ws.extensions, /permessage-deflate/, 'deflate negotiated');
      c.send({ type: 'subscribe', id: 'd', subscription: 'exact_snap_deflate', snapshot: true });
      const live = await c.wait((m) => m.type === 'live' && m.id === 'd', 30000, `${format}: live`);
      const rows = c.log.filter((m) => m.type === 'snapshot').flatMap((m) => m.rows);
      // every row of the table (the JSON round's 100 later rows are in the MessagePack one's)
      const ids = (await db.query('SELECT id FROM snap_deflate ORDER BY id')).rows.map((x) => x.id);
      assert.equal(rows.length, ids.length, `${format}: every row`);
      assert.deepEqual(rows.map((x) => x.id).sort((a, b) => a - b), ids);
      await db.query(`INSERT INTO snap_deflate SELECT i, repeat('z', 5000) FROM generate_series(${format === 'json' ? 5001 : 6001}, ${format === 'json' ? 5100 : 6100}) i`);
      await until(() => changesOf(c.log, 'd').length === 100, () => `${format}: the 100 changes (${changesOf(c.log, 'd').length})`, 30000);
      assert.ok(eid(changesOf(c.log, 'd')[0].event) > eid(live.at));
      c.close();
    }
  } finally {
    await db.query('DROP TABLE IF EXISTS snap_deflate CASCADE');
  }
});
