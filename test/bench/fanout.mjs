// test/bench/fanout.mjs — delivery cost of the rtsub server worker: how
// many messages per second it sends, and its CPU time per message, with
// clients that do not parse what they receive (so that the clients' JSON
// parsing on this machine's cores is not what is measured; compare (c) in
// latency.mjs, whose clients parse).
//
// Method: S clients (test/bench/loadgen.mjs, raw mode after the ack)
// subscribe to a table without filter or policy; B bursts of R-row
// inserts are committed; every row reaches every client: S x B x R
// messages.  Measured from the first insert until the server's
// rtsub_messages_sent_total has grown by that many: messages/s, and the
// worker's CPU time (/proc/PID/stat) / messages = CPU per message (the
// decoding and evaluation of the B x R changes included: with S = 1000 it
// is a small share).  Target of issue 3 (c): >= 500,000 messages/s.
//
// env: PGHOST/PGPORT/PGDATABASE of a cluster whose rtsub server streams it;
// BENCH_FANOUT_SUBSCRIBERS (1000), BENCH_FANOUT_ROWS (500 per burst),
// BENCH_FANOUT_BURSTS (4)
import pg from 'pg';
import { openClients, signer } from './loadgen.mjs';
import { workerPid, cpuSeconds, metrics, metricsErrors, sleep, loadavg } from './procstat.mjs';

const S = Number(process.env.BENCH_FANOUT_SUBSCRIBERS || 1000);
const R = Number(process.env.BENCH_FANOUT_ROWS || 500);
const B = Number(process.env.BENCH_FANOUT_BURSTS || 4);
const fail = (msg) => { console.error(`(fanout) FAILED: ${msg}`); process.exit(1); };

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
await db.query('DROP TABLE IF EXISTS bench_fanout CASCADE');
await db.query('CREATE TABLE bench_fanout (id bigint PRIMARY KEY, payload text)');
await db.query('GRANT SELECT ON bench_fanout TO rt_bench');
await db.query("SELECT rtsub.publish('bench_fanout')");
await db.query("SELECT rtsub.create_subscription('bench_fanout_all', 'bench_fanout')");
const pid = await workerPid(db);
if (!pid) fail('no rtsub server worker');

let received = 0;
const pool = await openClients({
  port, count: S, raw: true,
  token: signer(secret, (i) => ({ role: 'rt_bench', sub: `user${i}` })),
  subscribe: () => ({ subscription: 'bench_fanout_all' }),
  onMessage: () => { received++; },
});
if (pool.summary().subscribed !== S) fail(`subscribers: ${JSON.stringify(pool.summary())}`);
await sleep(500);

const expect = S * B * R;
const m0 = (await metrics(port)).rtsub_messages_sent_total;
const c0 = cpuSeconds(pid);
const t0 = Date.now();
for (let b = 0; b < B; b++)
  await db.query(`INSERT INTO bench_fanout SELECT i, 'p' FROM generate_series(${b * R + 1}, ${(b + 1) * R}) i`);
let m = m0;
while (m - m0 < expect && Date.now() - t0 < 300000) {
  await sleep(50);
  m = (await metrics(port)).rtsub_messages_sent_total;
}
const secs = (Date.now() - t0) / 1000;
const cpu = cpuSeconds(pid) - c0;
const sent = m - m0;
if (sent < expect) fail(`only ${sent} of ${expect} messages sent within 300 s`);
const rate = sent / secs;
console.log(`(fanout) ${sent.toLocaleString('en')} messages to ${S} raw clients (${B} x ${R} rows) in ${secs.toFixed(2)} s = ${Math.round(rate).toLocaleString('en')} messages/s` +
  `   target >= 500,000/s ${rate >= 500000 ? 'PASS' : 'MISS'}`);
console.log(`    worker CPU ${cpu.toFixed(2)} s = ${(cpu * 1e6 / sent).toFixed(2)} us per message (${(100 * cpu / secs).toFixed(0)} % of one core); load average ${loadavg()}`);
if (metricsErrors.length)
  console.log(`    note: ${metricsErrors.length} /metrics request(s) failed and were retried: ${[...new Set(metricsErrors)].join(', ')}`);
pool.terminate();
await db.query('DROP TABLE bench_fanout CASCADE');
await db.end();
process.exit(0);
