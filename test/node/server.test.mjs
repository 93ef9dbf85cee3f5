// test/node/server.test.mjs — the rtsub server's HTTP skeleton, against the
// shared test cluster (test/run: PGHOST/PGPORT/PGUSER/PGDATABASE are set; the
// cluster includes test/cluster.conf, whose rtsub.port test/run sets).  The port
// is read back with SHOW rtsub.port.
//
// Covers: rtsub.wait_until_running() and rtsub.server_status(); GET /healthz
// and /metrics; 404 and 405 answers; a burst of 100 parallel requests; an
// idle worker uses no CPU.
//
// The SQL functions are used from schema rtsub when the extension defines
// them, else they are created by hand in a private schema (same C symbols).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let client = null;        // a pg.Client when the pg package is installed
let port;
let fnSchema = 'rtsub';
let base;

// run one SQL statement, return the rows as arrays of strings (or null)
async function sql(text) {
  if (client) {
    const res = await client.query({ text, rowMode: 'array' });
    return res.rows.map((r) => r.map((v) => (v === null ? null : String(v))));
  }
  const out = execFileSync('psql', ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-c', text],
    { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.length > 0).map((l) => l.split('\t'));
}

// user + system CPU ticks of a process, from /proc/<pid>/stat
function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14, 15)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  try {
    const pg = (await import('pg')).default;
    client = new pg.Client();
    await client.connect();
  } catch {
    client = null;          // no pg package: psql
  }
  port = Number((await sql('SHOW rtsub.port'))[0][0]);
  base = `http://127.0.0.1:${port}`;

  const [[exists]] = await sql("SELECT to_regproc('rtsub.server_status') IS NOT NULL");
  if (exists !== 't' && exists !== 'true') {
    fnSchema = 'rtsub_server_test';
    await sql(`CREATE SCHEMA IF NOT EXISTS ${fnSchema}`);
    await sql(`CREATE OR REPLACE FUNCTION ${fnSchema}.server_status(
        OUT pid int, OUT state text, OUT port int, OUT started_at timestamptz,
        OUT http_requests bigint, OUT connections_accepted bigint,
        OUT connections_rejected bigint, OUT bytes_sent bigint)
      RETURNS SETOF record AS 'rtsub', 'rtsub_server_status' LANGUAGE C STRICT VOLATILE`);
    await sql(`CREATE OR REPLACE FUNCTION ${fnSchema}.wait_until_running(timeout_ms int DEFAULT 10000)
      RETURNS boolean AS 'rtsub', 'rtsub_wait_until_running' LANGUAGE C STRICT VOLATILE`);
  }
});

after(async () => {
  if (fnSchema !== 'rtsub')
    await sql(`DROP SCHEMA IF EXISTS ${fnSchema} CASCADE`);
  if (client)
    await client.end();
});

test('wait_until_running() is true and server_status() describes the worker', async () => {
  const [[running]] = await sql(`SELECT ${fnSchema}.wait_until_running(10000)`);
  assert.ok(running === 't' || running === 'true', `wait_until_running: ${running}`);
  const [[pid, state, p, startedAt]] = await sql(
    `SELECT pid, state, port, started_at FROM ${fnSchema}.server_status()`);
  assert.equal(state, 'running');
  assert.equal(Number(p), port);
  assert.ok(Number(pid) > 0);
  assert.ok(startedAt);
});

test('GET /healthz answers 200 with status, pid and uptime', async () => {
  const res = await fetch(`${base}/healthz`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^application\/json/);
  assert.equal(res.headers.get('cache-control'), 'no-store');
  const body = await res.json();
  assert.equal(body.status, 'ok');
  assert.ok(Number.isInteger(body.pid) && body.pid > 0);
  assert.ok(Number.isInteger(body.uptime_s) && body.uptime_s >= 0);
  const [[pid]] = await sql(`SELECT pid FROM ${fnSchema}.server_status()`);
  assert.equal(body.pid, Number(pid));
});

test('GET /metrics is Prometheus text and counts requests', async () => {
  const get = async () => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4');
    return res.text();
  };
  const value = (text, name) => {
    const m = text.match(new RegExp(`^${name} (\\d+)$`, 'm'));
    assert.ok(m, `${name} missing`);
    return Number(m[1]);
  };
  const first = await get();
  assert.equal(value(first, 'rtsub_up'), 1);
  for (const name of ['rtsub_http_requests_total', 'rtsub_connections_accepted_total',
    'rtsub_connections_rejected_total', 'rtsub_bytes_sent_total']) {
    assert.match(first, new RegExp(`^# HELP ${name} `, 'm'));
    assert.match(first, new RegExp(`^# TYPE ${name} counter$`, 'm'));
    value(first, name);
  }
  await fetch(`${base}/healthz`).then((r) => r.arrayBuffer());
  const second = await get();
  assert.ok(value(second, 'rtsub_http_requests_total') >= value(first, 'rtsub_http_requests_total') + 2);
  assert.ok(value(second, 'rtsub_bytes_sent_total') > value(first, 'rtsub_bytes_sent_total'));

  const [[requests]] = await sql(`SELECT http_requests FROM ${fnSchema}.server_status()`);
  assert.ok(Number(requests) >= value(second, 'rtsub_http_requests_total'));
});

test('unknown paths answer 404 with a JSON error', async () => {
  for (const path of ['/', '/nope', '/healthz/x', '/metrics2']) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 404, path);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const body = await res.json();
    assert.equal(body.error.code, 'not_found');
  }
});

test('methods other than GET answer 405', async () => {
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    const res = await fetch(`${base}/healthz`, { method });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.get('allow'), 'GET');
    const body = await res.json();
    assert.equal(body.error.code, 'method_not_allowed');
  }
  // with a request body, on a connection that stays usable
  const res = await fetch(`${base}/metrics`, { method: 'POST', body: 'x'.repeat(3000) });
  assert.equal(res.status, 405);
  await res.arrayBuffer();
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
});

test('a burst of 100 parallel requests is answered', async () => {
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) =>
    fetch(`${base}/${i % 2 ? 'healthz' : 'metrics'}`).then(async (r) => {
      await r.arrayBuffer();
      return r.status;
    })));
  assert.deepEqual(results, Array(100).fill(200));
});

test('the idle worker uses no CPU', async () => {
  const body = await (await fetch(`${base}/healthz`)).json();
  await sleep(500);          // let keep-alive connections settle
  const t0 = cpuTicks(body.pid);
  await sleep(5000);
  const used = cpuTicks(body.pid) - t0;
  // clock ticks are 1/100 s: allow 50 ms over 5 s
  assert.ok(used <= 5, `worker used ${used} ticks in 5 s`);
});
