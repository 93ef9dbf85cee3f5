// test/bench/idle.mjs — benchmark (d): the memory 10,000 idle authenticated
// WebSocket connections cost the rtsub server worker.
//
// Method
// * One table with a per-user policy (owner = rtsub.claim('sub')); every
//   client has its own token (distinct `sub` claim) and one subscription.
// * The worker is restarted first (pg_terminate_backend; the postmaster
//   starts it again), so that the baseline is a fresh process and not one
//   whose heap earlier benchmarks already grew.  Then a warm-up of 20
//   clients subscribes and leaves (caches of the catalog, compiled
//   subscription, libwebsockets' pools: one-time costs), and the baseline
//   is taken once the server counts no session.
// * Then N clients (test/bench/loadgen.mjs) connect and subscribe, in four
//   steps; after each the worker's /proc/PID/status is read: VmRSS (the
//   target), and its parts RssAnon (heap), RssShmem (shared buffers and
//   shared memory the worker touched), RssFile.
// * With all N connected: the worker's CPU time over 10 idle seconds (there
//   is no busy loop: it should be about 0), and a liveness check: one row
//   for the last client is committed and must reach it, and only it.
// * Finally the clients leave; RSS after they left is reported (what the
//   allocator keeps).
// Target: VmRSS growth <= 100 MB for 10,000 connections (PASS/MISS printed;
// a miss does not fail the script, a broken run does).
//
// env: PGHOST/PGPORT/PGDATABASE of a cluster whose rtsub server streams it
// and accepts >= N connections (rtsub.max_connections);
// BENCH_IDLE_CONNECTIONS (10000), BENCH_IDLE_FRESH (1: restart the worker).
import pg from 'pg';
import { openClients, signer } from './loadgen.mjs';
import { workerPid, memory, cpuSeconds, fdCount, metrics, memoryContexts, median, loadavg, MB, sleep } from './procstat.mjs';

const N = Number(process.env.BENCH_IDLE_CONNECTIONS || 10000);
const FRESH = (process.env.BENCH_IDLE_FRESH || '1') === '1';
const TARGET_MB = 100;
const fail = (msg) => { console.error(`(d) idle: FAILED: ${msg}`); process.exit(1); };

const db = new pg.Client();
await db.connect();
const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
await db.query('SELECT rtsub.wait_until_running(10000)');
await db.query(`DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_bench') THEN CREATE ROLE rt_bench; END IF;
  END $$`);
await db.query('DROP TABLE IF EXISTS bench_idle CASCADE');
await db.query('CREATE TABLE bench_idle (id bigserial PRIMARY KEY, owner text NOT NULL, payload text)');
await db.query('GRANT SELECT ON bench_idle TO rt_bench');
await db.query("SELECT rtsub.publish('bench_idle', replica_identity_full => true)");
await db.query("SELECT rtsub.create_subscription('bench_idle_own', 'bench_idle')");
await db.query("SELECT rtsub.create_policy('bench_idle', 'own', 'owner = rtsub.claim(''sub'')')");

let pid = await workerPid(db);
if (!pid) fail('no rtsub server worker');
if (FRESH) {
  await db.query('SELECT pg_terminate_backend($1)', [pid]);
  for (let k = 0; k < 300; k++) {
    await sleep(100);
    const p = await workerPid(db);
    if (p && p !== pid) { pid = p; break; }
  }
  if (!(await db.query('SELECT rtsub.wait_until_running(20000) AS up')).rows[0].up) fail('the worker did not come back');
}

const token = signer(secret, (i) => ({ role: 'rt_bench', sub: `user${i}` }));
const subscribe = () => ({ subscription: 'bench_idle_own' });
async function sessionsOpen() { return (await metrics(port)).rtsub_ws_sessions_open; }
async function waitSessions(n, ms = 30000) {
  const end = Date.now() + ms;
  let s;
  while ((s = await sessionsOpen()) !== n && Date.now() < end) await sleep(100);
  return s;
}

// warm-up
const warm = await openClients({ port, count: 20, first: N, token, subscribe });
if (warm.summary().subscribed !== 20) fail(`warm-up: ${JSON.stringify(warm.summary())}`);
warm.terminate();
if (await waitSessions(0) !== 0) fail('warm-up sessions did not go away');
await sleep(500);
const base = memory(pid);
const baseFds = fdCount(pid);
const baseCxt = await memoryContexts(db, pid);
console.log(`(d) idle connections: worker pid ${pid}, baseline VmRSS ${MB(base.VmRSS)} MB (anon ${MB(base.RssAnon)}, shmem ${MB(base.RssShmem)}, file ${MB(base.RssFile)}), ${baseFds} fds`);

// N clients in four steps
const pools = [];
const steps = [N / 4, N / 2, (3 * N) / 4, N].map(Math.round);
let opened = 0;
const tOpen = Date.now();
let last = null;
let lastReceived = null;
for (const target of steps) {
  const tStep = Date.now();
  const pool = await openClients({
    port, count: target - opened, first: opened, token, subscribe,
    onMessage: (i, m) => { if (m.type === 'change' && i === N - 1) last = m; else if (m.type === 'change') lastReceived = i; },
  });
  pools.push(pool);
  const s = pool.summary();
  if (s.subscribed !== target - opened) fail(`step to ${target}: ${JSON.stringify(s)}`);
  opened = target;
  const sessions = await waitSessions(opened);
  const mem = memory(pid);
  console.log(`    ${String(opened).padStart(6)} connected+subscribed: VmRSS ${MB(mem.VmRSS)} MB, growth ${MB(mem.VmRSS - base.VmRSS)} MB` +
    ` = ${((mem.VmRSS - base.VmRSS) / opened / 1024).toFixed(1)} kB/connection` +
    ` (anon +${MB(mem.RssAnon - base.RssAnon)}, shmem +${MB(mem.RssShmem - base.RssShmem)}, file +${MB(mem.RssFile - base.RssFile)});` +
    ` server sessions ${sessions}, worker fds ${fdCount(pid)}; opened in ${((Date.now() - tStep) / 1000).toFixed(1)} s`);
}
const openSecs = (Date.now() - tOpen) / 1000;

// idle: CPU over 10 s
await sleep(1000);
const c0 = cpuSeconds(pid);
const w0 = Date.now();
await sleep(10000);
const idleCpu = (cpuSeconds(pid) - c0) / ((Date.now() - w0) / 1000);
const mem = memory(pid);

// liveness: one row for the last client reaches it and nobody else
await db.query('INSERT INTO bench_idle (owner, payload) VALUES ($1, $2)', [`user${N - 1}`, 'ping']);
for (let k = 0; k < 100 && !last; k++) await sleep(50);
if (!last || last.row.owner !== `user${N - 1}`) fail(`the change for user${N - 1} did not arrive`);
await sleep(200);
if (lastReceived !== null) fail(`client ${lastReceived} received a change meant for user${N - 1}`);

// where it goes: PostgreSQL memory contexts (logged by the worker) vs the rest
const cxt = await memoryContexts(db, pid);
let breakdown = '    (memory contexts: not available: RTSUB_SERVER_LOG unset or unreadable)';
if (cxt && baseCxt) {
  const kB = (b) => (b / 1024).toFixed(1);
  // sessions are the newest children of TopMemoryContext, so the log shows
  // 100 of them; the subscriptions' contexts (children of the older
  // "rtsub subscriptions") are only summed up: they are the rest
  const sess = (cxt.contexts['rtsub session'] || []).map((c) => c.total);
  const subs = (cxt.contexts['rtsub subscription'] || []).map((c) => c.total);
  const inCxt = cxt.grand - baseCxt.grand;
  const anon = mem.RssAnon - base.RssAnon;
  const sessKB = sess.length ? median(sess) / 1024 : NaN;
  breakdown = `    where: PostgreSQL memory contexts +${MB(inCxt)} MB = ${kB(inCxt / N)} kB/connection:` +
    ` "rtsub session" contexts ${sessKB.toFixed(1)} kB each (median of ${sess.length} logged),` +
    (subs.length ? ` "rtsub subscription" ${kB(median(subs))} kB each (median of ${subs.length} logged),` : '') +
    ` other contexts (the subscriptions': "rtsub subscriptions" and children) ${(inCxt / N / 1024 - sessKB).toFixed(1)} kB per connection;` +
    `\n           outside them (malloc: libwebsockets, libuv, queues; allocator overhead) +${MB(anon - inCxt)} MB = ${kB((anon - inCxt) / N)} kB/connection`;
}

const growth = mem.VmRSS - base.VmRSS;
const growthMB = growth / 1048576;
const clientRss = process.memoryUsage().rss;
console.log(`    ${N} idle connections (opened in ${openSecs.toFixed(1)} s): worker VmRSS ${MB(base.VmRSS)} -> ${MB(mem.VmRSS)} MB,` +
  ` growth ${growthMB.toFixed(1)} MB = ${(growth / N / 1024).toFixed(1)} kB per connection` +
  ` (heap/anon +${MB(mem.RssAnon - base.RssAnon)} MB, shmem +${MB(mem.RssShmem - base.RssShmem)} MB, file +${MB(mem.RssFile - base.RssFile)} MB; VmHWM ${MB(mem.VmHWM)} MB)`);
console.log(breakdown);
console.log(`    target growth <= ${TARGET_MB} MB: ${growthMB <= TARGET_MB ? 'PASS' : 'MISS'}`);
console.log(`    worker CPU while idle: ${(idleCpu * 100).toFixed(2)} % of one core over 10 s; change to the last client delivered`);
console.log(`    (load generator: one node process, RSS ${MB(clientRss)} MB for ${N} clients; load average ${loadavg()})`);

// leave
for (const p of pools) p.terminate();
const left = await waitSessions(0, 60000);
await sleep(500);
const after = memory(pid);
console.log(`    after all left (${left} sessions): VmRSS ${MB(after.VmRSS)} MB (+${MB(after.VmRSS - base.VmRSS)} MB over the baseline, kept by the allocator)`);
await db.query('DROP TABLE bench_idle CASCADE');
await db.end();
process.exit(0);
