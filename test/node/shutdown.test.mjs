// test/node/shutdown.test.mjs — the rtsub server stops quickly with
// thousands of clients connected (issue: "a fast shutdown completes in
// under 5 s, even with thousands of clients"), and its clients are told so:
// close code 1001 (docs/protocol.md, close codes).
//
// It stops servers, so it runs its own cluster (initdb in a temporary
// directory, started with pg_ctl from $PGBIN as test/run provides it; the
// server's log is printed when a test fails).  Two cases, each with
// SHUTDOWN_CLIENTS (default 3000) WebSocket clients, each authenticated with
// its own token and subscribed (half JSON, half MessagePack), while a writer
// commits rows that reach some of them:
//   1. SIGTERM of the "rtsub server" worker: it exits, and every client's
//      socket is closed, within 5 s; the postmaster starts the worker again.
//   2. `pg_ctl stop -m fast`: returns (the postmaster is gone) within 5 s,
//      and every client's socket is closed.
// Every client that sees a close must see 1001 ("going away").  The
// measured times are printed (test diagnostics).  The 5 s bound is the
// property under test, not a performance target: typical times are well
// under a second.
//
// Uses test/bench/loadgen.mjs to hold the clients.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { openClients, signer, JSON_P, MSGPACK_P } from '../bench/loadgen.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TOP = path.resolve(HERE, '../..');
const N = Number(process.env.SHUTDOWN_CLIENTS || 3000);
const BOUND_MS = 5000;
const SECRET = 'rtsub-shutdown-test-secret-0123456789abcdef-012345';
const PGBIN = process.env.PGBIN || path.join(TOP, 'tmp_install/usr/lib/postgresql/15/bin');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let dir;
let datadir;
let logfile;
let pgport;
let httpPort;
let db;
let failedOnce = false;

function run(cmd, args) {
  const r = spawnSync(path.join(PGBIN, cmd), args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r;
}

// a port below the ephemeral range that nothing listens on
async function freePort(from) {
  for (let p = from; p < 32000; p++) {
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return p;
  }
  throw new Error('no free port');
}

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

async function workerPid() {
  const r = await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'");
  return r.rows.length ? r.rows[0].pid : null;
}

async function connectDb() {
  const c = new pg.Client({ host: dir, port: pgport, user: 'postgres', database: 'postgres' });
  await c.connect();
  return c;
}

async function startServer() {
  run('pg_ctl', ['-D', datadir, '-l', logfile, '-w', '-t', '60', 'start']);
  db = await connectDb();
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  const up = await db.query('SELECT rtsub.wait_until_running(20000) AS up');
  assert.equal(up.rows[0].up, true, 'the rtsub server runs');
}

// N clients, each subscribed to the rows it owns
async function openAll() {
  const token = signer(SECRET, (i) => ({ role: 'rt_shutdown', sub: `user${i}` }));
  const half = Math.floor(N / 2);
  const opts = { port: httpPort, token, subscribe: () => ({ subscription: 'shutdown_own' }) };
  const pools = [
    await openClients({ ...opts, count: half, protocol: JSON_P }),
    await openClients({ ...opts, count: N - half, first: half, protocol: MSGPACK_P }),
  ];
  const subscribed = pools.reduce((n, p) => n + p.summary().subscribed, 0);
  assert.equal(subscribed, N, `all clients subscribed: ${JSON.stringify(pools.map((p) => p.summary()))}`);
  const m = await fetch(`http://127.0.0.1:${httpPort}/metrics`).then((r) => r.text());
  assert.match(m, new RegExp(`^rtsub_ws_sessions_open ${N}$`, 'm'), 'the server counts every session');
  return pools;
}

// a writer committing rows for random clients until stopped
function writer() {
  let stop = false;
  let commits = 0;
  const done = (async () => {
    const c = await connectDb();
    c.on('error', () => {});
    try {
      while (!stop) {
        await c.query('INSERT INTO shutdown_t (owner) VALUES ($1)', [`user${commits % N}`]);
        commits++;
        await sleep(5);
      }
    } catch { /* the server went away */ }
    await c.end().catch(() => {});
  })();
  return { stop: async () => { stop = true; await done; return commits; } };
}

// every socket closed (or the bound passed): time from t0, and the close codes
async function closes(pools, t0) {
  const records = pools.flatMap((p) => p.records);
  const end = t0 + 3 * BOUND_MS;
  while (performance.now() < end && records.some((r) => r.closedAt === undefined)) await sleep(10);
  const codes = {};
  let last = t0;
  for (const r of records) {
    const k = r.closeCode === undefined ? 'open' : String(r.closeCode);
    codes[k] = (codes[k] || 0) + 1;
    if (r.closedAt !== undefined && r.closedAt > last) last = r.closedAt;
  }
  return { codes, ms: last - t0, changes: records.reduce((n, r) => n + r.changes, 0) };
}

before(async () => {
  assert.ok(fs.existsSync(path.join(PGBIN, 'initdb')), `PGBIN (${PGBIN}) has initdb: run through test/run`);
  assert.notEqual(process.getuid?.(), 0, 'run as a non-root user (test/run runs node tests as postgres)');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rtsub-shutdown-'));
  datadir = path.join(dir, 'data');
  logfile = path.join(dir, 'server.log');
  pgport = await freePort(20000 + Math.floor(Math.random() * 5000));
  httpPort = await freePort(pgport + 1);
  run('initdb', ['-D', datadir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-locale', '--no-sync']);
  fs.appendFileSync(path.join(datadir, 'postgresql.conf'), [
    '',
    fs.readFileSync(path.join(TOP, 'test/logical.conf'), 'utf8'),
    `port = ${pgport}`,
    "listen_addresses = ''",
    `unix_socket_directories = '${dir}'`,
    `rtsub.port = ${httpPort}`,
    `rtsub.jwt_secret = '${SECRET}'`,
    `rtsub.max_connections = ${N + 1000}`,
    'log_min_messages = log',
    '',
  ].join('\n'));
  await startServer();
  await db.query('CREATE ROLE rt_shutdown');
  await db.query('CREATE TABLE shutdown_t (id bigserial PRIMARY KEY, owner text NOT NULL)');
  await db.query('GRANT SELECT ON shutdown_t TO rt_shutdown');
  await db.query("SELECT rtsub.publish('shutdown_t', replica_identity_full => true)");
  await db.query("SELECT rtsub.create_subscription('shutdown_own', 'shutdown_t')");
  await db.query("SELECT rtsub.create_policy('shutdown_t', 'own', 'owner = rtsub.claim(''sub'')')");
});

after(async () => {
  if (db) await db.end().catch(() => {});
  if (datadir && fs.existsSync(path.join(datadir, 'postmaster.pid')))
    spawnSync(path.join(PGBIN, 'pg_ctl'), ['-D', datadir, '-m', 'immediate', '-w', 'stop']);
  if (failedOnce && logfile && fs.existsSync(logfile)) {
    const lines = fs.readFileSync(logfile, 'utf8').trim().split('\n');
    console.log(`---- last lines of ${logfile}\n${lines.slice(-40).join('\n')}`);
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test(`SIGTERM of the rtsub server worker with ${N} clients: it exits and every client is closed with 1001 within ${BOUND_MS} ms`, async (t) => {
  try {
    const pools = await openAll();
    const w = writer();
    await sleep(300);
    const pid = await workerPid();
    assert.ok(pid, 'the worker runs');
    const t0 = performance.now();
    process.kill(pid, 'SIGTERM');
    while (alive(pid) && performance.now() - t0 < 3 * BOUND_MS) await sleep(5);
    const exitMs = performance.now() - t0;
    const c = await closes(pools, t0);
    const commits = await w.stop();
    t.diagnostic(`worker exited ${exitMs.toFixed(0)} ms after SIGTERM; all ${N} sockets closed after ${c.ms.toFixed(0)} ms; close codes ${JSON.stringify(c.codes)}; ${commits} commits, ${c.changes} changes received before`);
    assert.ok(!alive(pid), 'the worker exited');
    assert.ok(exitMs < BOUND_MS, `the worker exited within ${BOUND_MS} ms (${exitMs.toFixed(0)} ms)`);
    assert.equal(c.codes.open, undefined, 'every client socket was closed');
    assert.ok(c.ms < BOUND_MS, `every client socket was closed within ${BOUND_MS} ms (${c.ms.toFixed(0)} ms)`);
    assert.deepEqual(c.codes, { 1001: N }, 'every client saw close code 1001');
    assert.ok(c.changes > 0, 'clients received changes before the stop');

    // the postmaster starts the worker again
    for (let k = 0; k < 200; k++) {
      const p = await workerPid();
      if (p && p !== pid) break;
      await sleep(100);
    }
    const up = await db.query('SELECT rtsub.wait_until_running(20000) AS up');
    assert.equal(up.rows[0].up, true, 'the worker was started again');
    assert.notEqual(await workerPid(), pid);
  } catch (e) {
    failedOnce = true;
    throw e;
  }
});

test(`pg_ctl stop -m fast with ${N} clients completes within ${BOUND_MS} ms, clients closed with 1001`, async (t) => {
  try {
    const pools = await openAll();
    const w = writer();
    await sleep(300);
    const pid = await workerPid();
    await db.end();
    db = null;
    const t0 = performance.now();
    // asynchronously: the clients keep answering (close frames) meanwhile
    const r = await new Promise((resolve) => {
      const child = spawn(path.join(PGBIN, 'pg_ctl'), ['-D', datadir, '-m', 'fast', '-w', '-t', '60', 'stop'],
        { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => { out += d; });
      child.stderr.on('data', (d) => { out += d; });
      child.on('exit', (status) => resolve({ status, out, ms: performance.now() - t0 }));
    });
    const stopMs = r.ms;
    assert.equal(r.status, 0, `pg_ctl stop: ${r.out}`);
    const c = await closes(pools, t0);
    const commits = await w.stop();
    t.diagnostic(`pg_ctl stop -m fast took ${stopMs.toFixed(0)} ms; all ${N} sockets closed after ${c.ms.toFixed(0)} ms; close codes ${JSON.stringify(c.codes)}; ${commits} commits, ${c.changes} changes received`);
    assert.ok(!alive(pid), 'the worker is gone');
    assert.ok(stopMs < BOUND_MS, `pg_ctl stop -m fast completed within ${BOUND_MS} ms (${stopMs.toFixed(0)} ms)`);
    assert.equal(c.codes.open, undefined, 'every client socket was closed');
    assert.deepEqual(c.codes, { 1001: N }, 'every client saw close code 1001');
    assert.ok(c.changes > 0, 'clients received changes before the stop');
  } catch (e) {
    failedOnce = true;
    throw e;
  }
});
