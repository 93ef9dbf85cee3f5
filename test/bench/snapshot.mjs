// test/bench/snapshot.mjs — the snapshot benchmark (issue 4 §5): one
// WebSocket client takes a 1,000,000-row snapshot (about 100 bytes per row
// as JSON, about 100 MB) while 100 other clients receive live changes.
//
// Method
// * bench_snap: id bigint primary key, owner text, payload text (64 hex
//   characters): a row is {"id":123456,"owner":"bulk","payload":"..."},
//   about 100 bytes.  It is filled and vacuumed before it is published
//   (the bulk load is not streamed), then published with a subscription
//   whose policy (owner = rtsub.claim('sub')) every row passes for the
//   snapshot client (sub "bulk"): the snapshot evaluates the policy per row,
//   as it would for any subscriber.
// * bench_snap_live: 100 clients (test/bench/loadgen.mjs) subscribe to it
//   (no policy: every commit reaches all 100); a writer commits one row
//   every 10 ms.  Latency = arrival time - the commit time in the event's
//   `ts` (same machine, same clock; microseconds), for every event of every
//   client: p50 / p99 / max, first for 5 s without a snapshot (the
//   baseline), then while the snapshot runs.
// * The snapshot client runs in a thread of its own (worker_threads: its
//   JSON parsing must not delay the other clients' event loop); it
//   subscribes with snapshot: true (chunkRows BENCH_SNAPSHOT_CHUNK_ROWS,
//   default 1000 as the protocol's; chunkBytes default 1 MB) and parses
//   every chunk, as a real client would, checking that every id arrives
//   exactly once.  MB/s = bytes of the `snapshot` messages (their
//   WebSocket payloads) / the time from sending subscribe to the last
//   chunk, in 10^6 bytes.
// * Memory: the worker is restarted first (BENCH_SNAPSHOT_FRESH=1, the
//   default), so that earlier benchmarks' heap does not hide growth; then
//   VmRSS of the "rtsub server" worker is sampled every 20 ms: its
//   peak during the snapshot minus its value just before it (RssAnon and
//   RssShmem, the shared memory queue it reads chunks from, reported
//   apart).  The "rtsub snapshot" worker that reads the table is a
//   separate process: its peak RSS and CPU are reported too.
// Targets (PASS/MISS printed; a miss does not fail the script, a broken
// run does): >= 100 MB/s; server worker RSS growth <= 64 MB; the other
// clients' p99 latency during the snapshot is reported.
//
// env: PGHOST/PGPORT/PGDATABASE of a cluster whose rtsub server streams it;
// BENCH_SNAPSHOT_ROWS (1000000), BENCH_SNAPSHOT_CHUNK_ROWS (1000),
// BENCH_SNAPSHOT_SUBSCRIBERS (100), BENCH_SNAPSHOT_PROTOCOL (rtsub.v1.json),
// BENCH_SNAPSHOT_FRESH (1: restart the worker first),
// BENCH_SNAPSHOT_PERF=FILE: `perf record -a -g -o FILE` while the snapshot
// runs (profiling; then: perf report -i FILE --sort pid,sym)
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import pg from 'pg';
import WebSocket from 'ws';
import { openClients, signer, JSON_P, MSGPACK_P } from './loadgen.mjs';
import { decode as mpDecode } from '@msgpack/msgpack';
import { workerPid, memory, cpuSeconds, loadavg, MB, sleep } from './procstat.mjs';

// the snapshot client thread: subscribes on 'go', checks every row, reports
if (!isMainThread) {
  const { port, token, protocol, rows, chunkRows } = workerData;
  const now = () => performance.timeOrigin + performance.now();
  const seen = new Uint8Array(rows + 1);
  const r = { snapBytes: 0, snapRows: 0, chunks: 0, dupes: 0, missing: 0, tSub: 0, tLast: 0, tLive: 0 };
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, protocol,
    { headers: { Authorization: `Bearer ${token}` }, perMessageDeflate: false, maxPayload: 1 << 30 });
  ws.on('error', (e) => parentPort.postMessage({ error: e.message }));
  ws.on('close', (code, reason) => { if (!r.tLive) parentPort.postMessage({ error: `closed ${code} ${reason}` }); });
  parentPort.on('message', () => {
    r.tSub = now();
    ws.send(JSON.stringify({ type: 'subscribe', id: 'snap', subscription: 'bench_snap_own', snapshot: true, chunkRows }));
  });
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? mpDecode(data) : JSON.parse(data.toString());
    if (m.type === 'welcome') parentPort.postMessage('ready');
    else if (m.type === 'snapshot') {
      r.snapBytes += data.length;
      r.chunks++;
      for (const row of m.rows) {
        const id = Number(row.id);
        if (seen[id]) r.dupes++;
        seen[id] = 1;
      }
      r.snapRows += m.rows.length;
      if (m.last) r.tLast = now();
    } else if (m.type === 'live') {
      r.tLive = now();
      for (let id = 1; id <= rows; id++) if (!seen[id]) r.missing++;
      parentPort.postMessage(r);
    } else if (m.type === 'error' || m.type === 'reset') parentPort.postMessage({ error: JSON.stringify(m) });
  });
} else {

const ROWS = Number(process.env.BENCH_SNAPSHOT_ROWS || 1000000);
const CHUNK_ROWS = Number(process.env.BENCH_SNAPSHOT_CHUNK_ROWS || 1000);
const SUBS = Number(process.env.BENCH_SNAPSHOT_SUBSCRIBERS || 100);
const PROTOCOL = process.env.BENCH_SNAPSHOT_PROTOCOL || JSON_P;
const PERIOD_MS = 10;
const TARGET_MBPS = 100;
const TARGET_RSS_MB = 64;
// a failure: the message, and what the server log says about crashes
function fail(msg) {
  console.error(`(snapshot) FAILED: ${msg}`);
  try {
    const log = readFileSync(process.env.RTSUB_SERVER_LOG, 'utf8').split('\n');
    const bad = log.filter((l) => /terminated by signal|PANIC|server process .* was terminated/.test(l));
    if (bad.length) console.error(`    server log (${process.env.RTSUB_SERVER_LOG}):\n      ${bad.slice(-5).join('\n      ')}`);
  } catch { /* no log */ }
  process.exit(1);
}
const nowMs = () => performance.timeOrigin + performance.now();

// commit time of an event's ts (ISO 8601), in ms with microseconds
function tsMs(ts) {
  const ms = Date.parse(ts);
  const frac = ts.match(/\.(\d+)/);
  return frac && frac[1].length > 3 ? ms + Number(`0.${frac[1].slice(3)}`) : ms;
}
function quantiles(xs) {
  const s = Float64Array.from(xs).sort();
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, p50: q(0.5), p99: q(0.99), max: s[s.length - 1] };
}
const fmt = (l) => `p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms, max ${l.max.toFixed(2)} ms (${l.n} events)`;

const db = new pg.Client();
db.on('error', (e) => fail(`database connection: ${e.message}`));
await db.connect();
const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
await db.query('SELECT rtsub.wait_until_running(10000)');
await db.query(`DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_bench') THEN CREATE ROLE rt_bench; END IF;
  END $$`);
await db.query('DROP TABLE IF EXISTS bench_snap, bench_snap_live CASCADE');
await db.query('CREATE TABLE bench_snap (id bigint PRIMARY KEY, owner text NOT NULL, payload text NOT NULL)');
const tLoad = Date.now();
await db.query(`INSERT INTO bench_snap SELECT i, 'bulk', repeat(md5(i::text), 2) FROM generate_series(1, ${ROWS}) i`);
await db.query('VACUUM ANALYZE bench_snap');
const tableMB = (await db.query("SELECT pg_table_size('bench_snap') AS b")).rows[0].b / 1048576;
await db.query('GRANT SELECT ON bench_snap TO rt_bench');
await db.query("SELECT rtsub.publish('bench_snap')");
await db.query("SELECT rtsub.create_subscription('bench_snap_own', 'bench_snap')");
await db.query("SELECT rtsub.create_policy('bench_snap', 'own', 'owner = rtsub.claim(''sub'')')");
await db.query('CREATE TABLE bench_snap_live (id bigserial PRIMARY KEY, payload text NOT NULL)');
await db.query('GRANT SELECT ON bench_snap_live TO rt_bench');
await db.query("SELECT rtsub.publish('bench_snap_live')");
await db.query("SELECT rtsub.create_subscription('bench_snap_live_all', 'bench_snap_live')");
console.log(`(snapshot) table of ${ROWS} rows, ${tableMB.toFixed(0)} MB on disk, loaded in ${((Date.now() - tLoad) / 1000).toFixed(1)} s`);
// the server reads (and discards) the load's WAL: let it finish first, so
// that what follows measures the snapshot, not decoding the load
{
  const flushed = (await db.query('SELECT pg_current_wal_flush_lsn() AS l')).rows[0].l;
  const t = Date.now();
  while (!(await db.query('SELECT decoded_upto >= $1::pg_lsn AS ok FROM rtsub.stats()', [flushed])).rows[0].ok) {
    if (Date.now() - t > 300000) throw new Error('the server did not decode the load within 300 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`    (the server read the load's WAL in ${((Date.now() - t) / 1000).toFixed(1)} s more)`);
}

// a fresh worker: its heap not grown by what ran before (10k connections...)
let pid = await workerPid(db);
if (!pid) fail('no rtsub server worker');
if ((process.env.BENCH_SNAPSHOT_FRESH || '1') === '1') {
  await db.query('SELECT pg_terminate_backend($1)', [pid]);
  for (let k = 0; k < 300; k++) {
    await sleep(100);
    const p = await workerPid(db);
    if (p && p !== pid) { pid = p; break; }
  }
  if (!(await db.query('SELECT rtsub.wait_until_running(20000) AS up')).rows[0].up) fail('the worker did not come back');
}
const token = signer(secret, (i) => ({ role: 'rt_bench', sub: i < 0 ? 'bulk' : `user${i}` }));

// the other clients, and the writer
let phase = null;
const lat = { before: [], during: [] };
const live = await openClients({
  port, count: SUBS, token, subscribe: () => ({ subscription: 'bench_snap_live_all' }),
  onMessage: (i, m) => { if (m.type === 'change' && phase) lat[phase].push(nowMs() - tsMs(m.ts)); },
});
if (live.summary().subscribed !== SUBS) fail(`live subscribers: ${JSON.stringify(live.summary())}`);
const wdb = new pg.Client();
wdb.on('error', (e) => fail(`writer connection: ${e.message}`));
await wdb.connect();
let writing = true;
let commits = 0;
const writer = (async () => {
  const t0 = Date.now();
  for (let k = 0; writing; k++) {
    const wait = t0 + k * PERIOD_MS - Date.now();
    if (wait > 0) await sleep(wait);
    try {
      await wdb.query('INSERT INTO bench_snap_live (payload) VALUES ($1)', ['x'.repeat(40)]);
    } catch (e) { fail(`writer: ${e.message}`); }
    commits++;
  }
})();

// the snapshot client, in a thread of its own (its parsing must not delay
// the other clients' event loop): connected, not yet subscribed
const snap = new Worker(new URL(import.meta.url), {
  workerData: { port, token: await token(-1), protocol: PROTOCOL, rows: ROWS, chunkRows: CHUNK_ROWS },
});
let snapResult = null;
let snapError = null;
snap.on('error', (e) => { snapError = `snapshot client thread: ${e.message}`; });
await new Promise((resolve) => snap.on('message', (m) => {
  if (m === 'ready') resolve();
  else if (m.error) { snapError = m.error; resolve(); }
  else snapResult = m;
}));
if (snapError) fail(snapError);

// baseline latency, 5 s
phase = 'before';
await sleep(5000);
phase = null;
await sleep(200);

// the snapshot, sampling memory
const base = memory(pid);
let peak = { ...base };
let snapPid = null;
let snapPeak = 0;
let snapAnon = 0;
let snapShmem = 0;
let snapCpu = 0;
const cpu0 = cpuSeconds(pid);
let sampling = true;
const sampler = (async () => {
  while (sampling) {
    let m;
    try { m = memory(pid); } catch { snapError = snapError || `the rtsub server worker (pid ${pid}) is gone`; break; }
    for (const k of Object.keys(m)) if (m[k] > (peak[k] || 0)) peak[k] = m[k];
    if (snapPid) {
      try {
        const sm = memory(snapPid);
        if (sm.VmRSS) {
          snapPeak = Math.max(snapPeak, sm.VmRSS);
          snapAnon = Math.max(snapAnon, sm.RssAnon);
          snapShmem = Math.max(snapShmem, sm.RssShmem);
        }
        snapCpu = cpuSeconds(snapPid);
      } catch { /* it exited */ }
    }
    await sleep(20);
  }
})();
let perf = null;
if (process.env.BENCH_SNAPSHOT_PERF) {
  perf = spawn('perf', ['record', '-a', '-g', '-F', '999', '-o', process.env.BENCH_SNAPSHOT_PERF], { stdio: 'ignore' });
  await sleep(500);
}
phase = 'during';
snap.postMessage('go');
(async () => {
  for (let k = 0; k < 500 && !snapPid; k++) {
    const r = await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub snapshot'");
    if (r.rows.length) snapPid = r.rows[0].pid;
    else await sleep(5);
  }
})();
const deadline = Date.now() + 600000;
while (!snapResult && !snapError && Date.now() < deadline) await sleep(20);
phase = null;
sampling = false;
await sampler;
if (perf) {
  perf.kill('SIGINT');
  await new Promise((r) => perf.on('exit', r));
}
if (snapError) fail(`snapshot client: ${snapError}`);
const cpuServer = cpuSeconds(pid) - cpu0;
writing = false;
await writer;
if (snapError) fail(`snapshot client: ${snapError}`);
if (!snapResult) fail('no live message within 10 minutes');
if (snapResult.error) fail(`snapshot client: ${snapResult.error}`);
const { snapBytes, snapRows, chunks, dupes, missing, tSub, tLast, tLive } = snapResult;
if (snapRows !== ROWS || dupes || missing) fail(`snapshot rows ${snapRows}, duplicates ${dupes}, missing ${missing}, want ${ROWS}`);

const secs = (tLast - tSub) / 1000;
const mbps = snapBytes / secs / 1e6;
const growth = peak.VmRSS - base.VmRSS;
const before = quantiles(lat.before);
const during = quantiles(lat.during);
console.log(`(snapshot) ${ROWS.toLocaleString('en')} rows, ${(snapBytes / 1e6).toFixed(1)} MB (${(snapBytes / ROWS).toFixed(0)} bytes/row, ${PROTOCOL}) in ${chunks} chunks of <= ${CHUNK_ROWS} rows:` +
  ` ${secs.toFixed(2)} s = ${mbps.toFixed(1)} MB/s, ${Math.round(ROWS / secs).toLocaleString('en')} rows/s; live ${((tLive - tLast) / 1000).toFixed(2)} s after the last chunk`);
console.log(`    target >= ${TARGET_MBPS} MB/s: ${mbps >= TARGET_MBPS ? 'PASS' : 'MISS'}`);
console.log(`    rtsub server worker: VmRSS ${MB(base.VmRSS)} MB before, peak ${MB(peak.VmRSS)} MB: growth ${MB(growth)} MB` +
  ` (RssAnon +${MB(peak.RssAnon - base.RssAnon)}, RssShmem +${MB(peak.RssShmem - base.RssShmem)}; peaks sampled every 20 ms); CPU ${cpuServer.toFixed(2)} s`);
console.log(`    target growth <= ${TARGET_RSS_MB} MB: ${growth / 1048576 <= TARGET_RSS_MB ? 'PASS' : 'MISS'}`);
console.log(`    rtsub snapshot worker (reads the table): ${snapPid ? `peak VmRSS ${MB(snapPeak)} MB (RssAnon ${MB(snapAnon)}, RssShmem ${MB(snapShmem)}), CPU ${snapCpu.toFixed(2)} s` : 'not seen'}`);
console.log(`    other clients: ${SUBS} subscribers, a commit every ${PERIOD_MS} ms (${commits} commits), commit -> client latency:`);
console.log(`      without a snapshot: ${fmt(before)}`);
console.log(`      during the snapshot: ${fmt(during)}`);
console.log(`    (${secs < 3 ? 'the snapshot ran under 3 s: few latency samples; ' : ''}clients, writer and server share this machine's cores; load average ${loadavg()})`);
await snap.terminate();
live.terminate();
await wdb.end();
await db.query('DROP TABLE bench_snap, bench_snap_live CASCADE');
await db.end();
process.exit(0);
}
