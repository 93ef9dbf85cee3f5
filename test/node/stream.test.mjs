// test/node/stream.test.mjs — the rtsub server consumes its slot in-process:
// committed changes of published tables in rtsub.database (the shared
// cluster's "postgres") are decoded at once (the commit wakes the server),
// counted in /metrics, and confirmed on the slot; unpublished tables are not
// counted; the server keeps up with a burst.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

let db;
let base;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// read one metric from /metrics
async function metric(name) {
  const body = await (await fetch(`${base}/metrics`)).text();
  const m = body.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} present`);
  return Number(m[1]);
}

// wait until fn() is true, polling every 10 ms; returns the time taken
async function until(fn, timeoutMs, what) {
  const start = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

before(async () => {
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  const port = (await db.query('SHOW rtsub.port')).rows[0]['rtsub.port'];
  base = `http://127.0.0.1:${port}`;
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  const up = await db.query('SELECT rtsub.wait_until_running(10000) AS up');
  assert.equal(up.rows[0].up, true);
  await db.query('DROP TABLE IF EXISTS stream_items, stream_other');
  await db.query('CREATE TABLE stream_items (id int PRIMARY KEY, v text)');
  await db.query('CREATE TABLE stream_other (id int PRIMARY KEY, v text)');
  await db.query("SELECT rtsub.publish('stream_items')");
});

after(async () => {
  await db.query('DROP TABLE IF EXISTS stream_items, stream_other');

  await db.end();
});

test('the server created its slot with the rtsub plugin', async () => {
  await until(async () => (await db.query(
    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'rtsub' AND plugin = 'rtsub'")).rowCount === 1,
  10000, 'the slot');
});

test('committed changes of published tables are decoded and confirmed', async () => {
  const before = await metric('rtsub_changes_decoded_total');
  await db.query("INSERT INTO stream_items SELECT i, 'v' || i FROM generate_series(1, 100) i");
  await db.query("UPDATE stream_items SET v = 'w' WHERE id <= 10");
  await db.query('DELETE FROM stream_items WHERE id > 90');
  await db.query("INSERT INTO stream_other VALUES (1, 'not published')");
  const lsn = (await db.query('SELECT pg_current_wal_flush_lsn() AS l')).rows[0].l;
  const ms = await until(async () => (await metric('rtsub_changes_decoded_total')) >= before + 120,
    10000, '120 decoded changes');
  await sleep(200);
  assert.equal(await metric('rtsub_changes_decoded_total'), before + 120,
    'exactly the published table\'s 100 inserts, 10 updates and 10 deletes');
  // the slot keeps the resume window (10 min by default): not confirmed yet
  assert.equal((await db.query(
    "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'rtsub'",
    [lsn])).rows[0].ok, false, 'the window holds the changes');
  // with no window, they are confirmed
  await db.query('ALTER SYSTEM SET rtsub.resume_window_size = 0');
  await db.query('SELECT pg_reload_conf()');
  try {
    await until(async () => (await db.query(
      "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'rtsub'",
      [lsn])).rows[0].ok, 10000, 'the slot to confirm');
  } finally {
    await db.query('ALTER SYSTEM RESET rtsub.resume_window_size');
    await db.query('SELECT pg_reload_conf()');
  }
  assert.ok(ms < 5000, `decoded within ${ms} ms`);
});

test('a commit wakes the server: a single change is decoded promptly', async () => {
  const before = await metric('rtsub_changes_decoded_total');
  const t0 = Date.now();
  await db.query("INSERT INTO stream_items VALUES (1000, 'one')");
  await until(async () => (await metric('rtsub_changes_decoded_total')) === before + 1, 5000, 'one change');
  // not a timing assertion on speed: only that no 1 s polling interval was needed
  assert.ok(Date.now() - t0 < 900, `decoded after ${Date.now() - t0} ms`);
});

test('a burst of 20,000 changes is decoded and the lag returns to 0', async () => {
  const before = await metric('rtsub_changes_decoded_total');
  await db.query("INSERT INTO stream_items SELECT i, repeat('x', 100) FROM generate_series(10001, 30000) i");
  await until(async () => (await metric('rtsub_changes_decoded_total')) >= before + 20000, 30000, '20,000 changes');
  await until(async () => (await metric('rtsub_stream_lag_bytes')) === 0, 10000, 'lag 0');
  assert.equal(await metric('rtsub_stream_errors_total'), 0, 'no stream errors');
});
