// test/bench/eval.mjs — benchmark (a): the cost of deciding who sees a
// change, per change x subscriber, against the per-subscriber SQL approach
// (Supabase's walrus: for every change and every subscriber, set the role
// and the claims, then run one query), measured in the same run.
//
// rtsub: N WebSocket subscribers with distinct claims subscribe to one
// table whose policy is "owner = rtsub.claim('sub')"; M single-row inserts
// are committed, each visible to exactly one subscriber.  The server
// worker's CPU time for the M changes with N subscribers, minus its CPU time
// for M changes with no subscriber (decoding alone), divided by M x N, is the
// evaluation cost per change x subscriber (it includes sending the one
// matching event per change).
//
// Per-subscriber SQL: in one server-side PL/pgSQL loop (no network), for
// each of M' changes and each of N' subscribers: set_config('role'),
// set_config('request.jwt.claims'), and SELECT the changed row by primary key
// under row-level security with the same policy.  Its time / (M' x N').
//
// Usage: node eval.mjs  (env: PGHOST/PGPORT/PGDATABASE of a cluster whose
// rtsub server streams PGDATABASE; BENCH_SUBSCRIBERS, BENCH_CHANGES)
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';

const N = Number(process.env.BENCH_SUBSCRIBERS || 10000);
const M = Number(process.env.BENCH_CHANGES || 2000);
const N_SQL = Math.min(N, 200);
const M_SQL = Math.min(M, 200);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// CPU seconds (user + system) of a process
function cpu(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const x = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(x[11]) + Number(x[12])) / 100;
}

const db = new pg.Client();
await db.connect();
const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
await db.query('SELECT rtsub.wait_until_running(10000)');
const pid = (await db.query('SELECT pid FROM rtsub.server_status()')).rows[0].pid;
await db.query(`DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_bench') THEN CREATE ROLE rt_bench; END IF;
  END $$`);
await db.query('DROP TABLE IF EXISTS bench_eval CASCADE');
await db.query('CREATE TABLE bench_eval (id bigint PRIMARY KEY, owner text NOT NULL, payload text)');
await db.query('GRANT SELECT ON bench_eval TO rt_bench');
await db.query("SELECT rtsub.publish('bench_eval', replica_identity_full => true)");
await db.query("SELECT rtsub.create_subscription('bench_own', 'bench_eval')");
await db.query("SELECT rtsub.create_policy('bench_eval', 'own', 'owner = rtsub.claim(''sub'')')");
// the same rule as native RLS, for the per-subscriber SQL approach
await db.query('ALTER TABLE bench_eval ENABLE ROW LEVEL SECURITY');
await db.query("CREATE POLICY own ON bench_eval FOR SELECT TO rt_bench USING (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')");

// N subscribers with distinct claims
const key = new TextEncoder().encode(secret);
const sockets = [];
let received = 0;
const t0 = Date.now();
for (let start = 0; start < N; start += 500) {
  const batch = [];
  for (let i = start; i < Math.min(N, start + 500); i++) {
    batch.push((async () => {
      const tok = await new jose.SignJWT({ role: 'rt_bench', sub: `user${i}` })
        .setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime('1h').sign(key);
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, 'rtsub.v1.json',
        { headers: { Authorization: `Bearer ${tok}` } });
      sockets.push(ws);
      await new Promise((resolve, reject) => {
        ws.on('error', reject);
        ws.on('message', (data) => {
          const m = JSON.parse(data.toString());
          if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'subscribe', id: 's', subscription: 'bench_own' }));
          else if (m.type === 'subscribed') resolve();
          else if (m.type === 'change') received++;
          else if (m.type === 'error') reject(new Error(JSON.stringify(m)));
        });
      });
    })());
  }
  await Promise.all(batch);
}
console.log(`${N} subscribers connected and subscribed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

// commit M changes, each for one subscriber, and wait until all are delivered
async function burst(firstId, expectDelivered) {
  const before = cpu(pid);
  const start = Date.now();
  await db.query(`INSERT INTO bench_eval SELECT i, 'user' || (i % ${N}), 'p' FROM generate_series(${firstId}, ${firstId + M - 1}) i`);
  const lsn = (await db.query('SELECT pg_current_wal_flush_lsn() AS l')).rows[0].l;
  for (;;) {
    // decoded and evaluated (the slot itself stays behind: the resume window)
    const r = await db.query('SELECT decoded_upto >= $1::pg_lsn AS ok FROM rtsub.stats()', [lsn]);
    if (r.rows[0].ok && received >= expectDelivered) break;
    if (Date.now() - start > 120000) throw new Error('timed out');
    await sleep(20);
  }
  return cpu(pid) - before;
}

received = 0;
const withSubs = await burst(1, M);
console.log(`rtsub: ${M} changes x ${N} subscribers: worker CPU ${withSubs.toFixed(2)} s, ${received} events delivered`);
for (const ws of sockets) ws.terminate();
await sleep(1000);
const decodeOnly = await burst(M + 1, 0);
console.log(`rtsub: ${M} changes, no subscribers: worker CPU ${decodeOnly.toFixed(2)} s`);
const rtsubNs = Math.max(withSubs - decodeOnly, 0.01) * 1e9 / (M * N);

// per-subscriber SQL, server side
const r = await db.query(`
  DO $$
  DECLARE
    t0 timestamptz := clock_timestamp();
    found int;
  BEGIN
    FOR c IN 1..${M_SQL} LOOP
      FOR s IN 0..${N_SQL - 1} LOOP
        PERFORM set_config('role', 'rt_bench', true);
        PERFORM set_config('request.jwt.claims', json_build_object('sub', 'user' || s, 'role', 'rt_bench')::text, true);
        SELECT count(*) INTO found FROM bench_eval WHERE id = c;
        PERFORM set_config('role', 'none', true);
      END LOOP;
    END LOOP;
    PERFORM set_config('rtsub_bench.elapsed', extract(epoch FROM clock_timestamp() - t0)::text, false);
  END $$;
  SELECT current_setting('rtsub_bench.elapsed') AS s`).catch(() => null);
let sqlNs = null;
{
  // the DO block stores its time in a custom setting of this session
  const s = await db.query("SELECT current_setting('rtsub_bench.elapsed', true) AS s").catch(() => null);
  const secs = Number(s?.rows?.[0]?.s);
  if (secs > 0) sqlNs = secs * 1e9 / (M_SQL * N_SQL);
}
console.log('');
console.log(`evaluation cost per change x subscriber (N=${N}, M=${M}):`);
console.log(`  rtsub (in-process, compiled)      ${rtsubNs.toFixed(0).padStart(8)} ns   target <= 1000 ns  ${rtsubNs <= 1000 ? 'PASS' : 'MISS'}`);
if (sqlNs) {
  console.log(`  per-subscriber SQL (walrus-style) ${sqlNs.toFixed(0).padStart(8)} ns   (${M_SQL} x ${N_SQL} in PL/pgSQL)`);
  const ratio = sqlNs / rtsubNs;
  console.log(`  ratio                             ${ratio.toFixed(0).padStart(8)} x    target >= 100x     ${ratio >= 100 ? 'PASS' : 'MISS'}`);
}
await db.query('DROP TABLE bench_eval CASCADE');
await db.end();
process.exit(0);
