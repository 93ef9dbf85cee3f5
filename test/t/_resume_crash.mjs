// test/t/_resume_crash.mjs — the client side of t/003_resume_crash.pl: run
// by that TAP test against its own cluster (PGHOST/PGPORT/PGDATABASE,
// RTSUB_DATADIR, RTSUB_SERVER_LOG, pg_ctl on PATH), it prints one TAP-ish
// line per check ("ok - ..." / "not ok - ... # detail") and "# ..." notes;
// the Perl test turns them into its own results.
//
//   node t/_resume_crash.mjs setup      tables, subscription (idempotent)
//   node t/_resume_crash.mjs kill9      kill -9 of the rtsub server worker
//   node t/_resume_crash.mjs immediate  pg_ctl restart -m immediate
//   node t/_resume_crash.mjs fast       pg_ctl restart -m fast
//   node t/_resume_crash.mjs dropext    DROP EXTENSION leaves no slot; a new epoch after CREATE
//
// kill9 / immediate / fast: while 2 writers insert into crash_log (they
// reconnect through the outage), four subscribers of group 1 — WebSocket
// JSON (first subscribe with a snapshot), WebSocket MessagePack, SSE read
// with fetch (Last-Event-ID set by this script) and EventSource
// (reconnecting by itself) — have changes flowing when the disruption hits;
// they reconnect and resume after the newest event id they have. Then
// writers stop, a sentinel row is inserted, and each subscriber's rows
// (snapshot ∪ changes over all its connections) must be exactly the
// committed rows of group 1: zero lost, zero duplicated, no reset, event
// ids strictly increasing, the epoch unchanged.
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import {
  sleep, ROLE, rng, seedFromEnv, eid, connectDb, serverInfo, token, until,
  wsClient, sseUrl, sseEventSource, writers, changesOf, Resumer, assertExact, short,
} from '../node/_exact.mjs';

const run = promisify(execFile);
const mode = process.argv[2];
const SUB = 'exact_crash';
let failures = 0;

function check(ok, what, detail = '') {
  if (!ok) failures++;
  console.log(`${ok ? 'ok' : 'not ok'} - ${what}${!ok && detail ? ` # ${String(detail).replace(/\s+/g, ' ').slice(0, 2000)}` : ''}`);
  return ok;
}
// runs an assertion block as one check
async function checkBlock(what, fn) {
  try {
    await fn();
    return check(true, what);
  } catch (err) {
    return check(false, what, err.message);
  }
}
const note = (s) => console.log(`# ${s}`);

async function setup(db) {
  await serverInfo(db);
  await db.query(`CREATE TABLE IF NOT EXISTS crash_log (seq bigserial PRIMARY KEY, g int NOT NULL, pad text)`);
  await db.query(`GRANT SELECT ON crash_log TO ${ROLE}`);
  await db.query("SELECT rtsub.publish('crash_log')");
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM rtsub.subscriptions WHERE name = '${SUB}') THEN
        PERFORM rtsub.create_subscription('${SUB}', 'crash_log', filter => 'g = params.g',
          params => '{"g": "integer"}', roles => '{${ROLE}}');
      END IF; END $$`);
}

async function serverPid(db) {
  const res = await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'");
  return res.rowCount ? Number(res.rows[0].pid) : 0;
}

// a connection once the cluster accepts them again
async function reconnectDb(timeoutMs = 120000) {
  let db = null;
  await until(async () => {
    try { db = await connectDb(); await db.query('SELECT 1'); return true; } catch { db = null; return false; }
  }, 'the cluster to accept connections', timeoutMs, 250);
  return db;
}

// keeps a Resumer connected: whenever its connection closes, reconnect and
// resume (retrying while the server is down)
function keepConnected(r, state) {
  return (async () => {
    while (state.running) {
      const why = await Promise.race([r.client.closed, state.stopped]);
      if (!state.running) break;
      note(`${r.kind}: connection ${r.sessions.length} closed: ${JSON.stringify(why)}`);
      await sleep(200);
      for (;;) {
        if (!state.running) return;
        try {
          const m = await r.open({ timeoutMs: 10000 });
          if (m.type !== 'subscribed') r.problem(`answer to the resume: ${short(m)}`);
          break;
        } catch (err) {
          r.reconnectErrors = (r.reconnectErrors ?? 0) + 1;
          if (r.reconnectErrors <= 3 || r.reconnectErrors % 50 === 0) note(`${r.kind}: reconnect failed (${r.reconnectErrors}): ${err.message}`);
          if (r.client && !r.client.isClosed) r.client.terminate();
          await sleep(300);
        }
      }
    }
  })();
}

async function crash(kind) {
  const seed = seedFromEnv();
  note(`mode ${kind}, seed ${seed}`);
  const r = rng(seed);
  let db = await connectDb();
  await setup(db);
  const srv = await serverInfo(db);
  const tok = await token(srv.secret, { sub: `crash-${kind}` });
  const start = Number((await db.query('SELECT coalesce(max(seq), 0) AS m FROM crash_log')).rows[0].m);
  const logFile = process.env.RTSUB_SERVER_LOG;
  const logOffset = logFile ? statSync(logFile).size : 0;
  const startTime = (await db.query('SELECT pg_postmaster_start_time() AS t')).rows[0].t.getTime();

  const base = { port: srv.port, base: srv.base, tok, subscription: SUB, params: { g: 1 } };
  const subs = [
    new Resumer({ ...base, kind: 'ws-json', snapshot: true, chunkRows: 100 }),
    new Resumer({ ...base, kind: 'ws-msgpack' }),
    new Resumer({ ...base, kind: 'sse-raw' }),
  ];
  for (const s of subs) {
    const m = await s.open();
    if (!check(m.type === 'subscribed', `${kind}: ${s.kind} subscribed`, short(m))) return;
  }
  const es = sseEventSource(sseUrl(srv.base, { ...base, tok }));
  await es.wait((m) => m.type === 'subscribed', 15000, 'EventSource subscribed');
  const state = { running: true };
  state.stopped = new Promise((resolve) => { state.stop = resolve; });
  const keepers = subs.map((s) => keepConnected(s, state));

  const step = async (c, rr) => {
    const n = rr.next() < 0.7 ? 1 : rr.int(2, 10);
    await c.query(`INSERT INTO crash_log (g, pad) SELECT 1 + (random() < 0.3)::int, repeat('c', $1)
                   FROM generate_series(1, $2)`, [rr.int(0, 300), n]);
  };
  const w = writers(2, step, { seed, pauseMs: [1, 6] });
  try {
    // changes are flowing to everyone (EventSource has a lastEventId)
    await until(() => subs.every((s) => s.events.length >= 30) && changesOf(es.log, 'sse').length >= 30,
      () => `changes flowing to every subscriber (${subs.map((s) => `${s.kind}: ${s.events.length}`).join(', ')}, ` +
        `EventSource: ${changesOf(es.log, 'sse').length}; writes ${w.ops}, errors ${w.errors} ${w.lastError})`, 60000, 50);
    await sleep(r.int(0, 500));
    const before = w.ops;
    if (kind === 'kill9') {
      const pid = await serverPid(db);
      check(pid > 0, 'kill9: the rtsub server worker runs');
      note(`kill -9 ${pid}`);
      process.kill(pid, 'SIGKILL');
    } else {
      note(`pg_ctl restart -m ${kind}`);
      const res = await run('pg_ctl', ['-D', process.env.RTSUB_DATADIR, '-l', logFile, '-m', kind, '-w', '-t', '120', 'restart'],
        { timeout: 180000 }).catch((err) => err);
      check(!(res instanceof Error), `${kind}: pg_ctl restart -m ${kind} succeeded`, res instanceof Error ? `${res.message} ${res.stderr}` : '');
    }
    db.end().catch(() => {});
    db = await reconnectDb();
    await until(async () => {
      try { return (await db.query('SELECT rtsub.wait_until_running(1000) AS up')).rows[0].up; } catch { return false; }
    }, 'the rtsub server to run again', 120000, 250);
    note(`${w.ops - before} writer transactions during the outage (${w.errors} failed)`);
    // writers go on after the restart, the subscribers catch up
    const after = w.ops;
    await until(() => w.ops >= after + 200, 'writes after the restart', 120000, 100);
    await sleep(r.int(200, 1000));
  } finally {
    await w.stop();
  }
  // restart evidence
  const log = logFile ? readFileSync(logFile, 'utf8').slice(logOffset) : '';
  if (kind === 'kill9') {
    check(/terminated by signal 9/.test(log), 'kill9: the postmaster saw the worker killed by signal 9');
    check(/all server processes terminated; reinitializing/.test(log), 'kill9: the cluster crash-restarted');
  } else {
    const t1 = (await db.query('SELECT pg_postmaster_start_time() AS t')).rows[0].t.getTime();
    check(t1 > startTime, `${kind}: PostgreSQL restarted`);
  }

  const sentinel = String((await db.query("INSERT INTO crash_log (g, pad) VALUES (1, 'sentinel') RETURNING seq")).rows[0].seq);
  const has = (evs) => evs.some((e) => String(e.row.seq) === sentinel);
  await checkBlock(`${kind}: every subscriber got the sentinel`, async () => {
    await until(() => subs.every((s) => has(s.events)) && has(changesOf(es.log, 'sse')),
      `the sentinel (${subs.map((s) => `${s.kind}: ${s.events.length} changes, ${s.sessions.length} connections`).join(', ')}; ` +
      `EventSource ${changesOf(es.log, 'sse').length} changes)`, 90000, 100);
  });
  state.running = false;
  state.stop();
  await Promise.all(keepers);

  const all = (await db.query('SELECT seq FROM crash_log WHERE g = 1 ORDER BY seq')).rows.map((x) => String(x.seq));
  const since = (await db.query('SELECT seq FROM crash_log WHERE g = 1 AND seq > $1 ORDER BY seq', [start])).rows.map((x) => String(x.seq));
  for (const s of subs) {
    for (const e of s.events) e.row.seq = String(e.row.seq);
    for (const row of s.rows) row.seq = String(row.seq);
    await checkBlock(`${kind}: ${s.kind} reconnected and resumed`, async () => {
      if (s.sessions.length < 2) throw new Error(`${s.sessions.length} connection(s)`);
      const resumed = s.sessions.slice(1).filter((x) => x.subscribed?.resumed === true).length;
      if (resumed < 1) throw new Error('no resumed subscribed');
    });
    check(s.resets.length === 0, `${kind}: ${s.kind} got no reset`, short(s.resets));
    await checkBlock(`${kind}: ${s.kind}: zero lost, zero duplicated (${s.snapshot ? 'snapshot ∪ ' : ''}changes == committed rows)`,
      () => assertExact(s, s.snapshot ? all : since, `${kind} ${s.kind}`));
    note(`${s.kind}: ${s.sessions.length} connections (changes per connection: ` +
      `${s.sessions.map((x) => changesOf(x.client.log, s.id).length).join(' ')}), ${s.rows.length} snapshot rows, ${s.events.length} changes`);
  }
  // EventSource: reconnected by itself with Last-Event-ID
  const welcomes = es.log.filter((m) => m.type === 'welcome');
  check(welcomes.length >= 2, `${kind}: EventSource reconnected by itself`, `${welcomes.length} welcome(s), ${es.failures} failures`);
  check(new Set(welcomes.map((m) => m.epoch)).size === 1, `${kind}: the epoch stayed the same`, welcomes.map((m) => m.epoch).join(' '));
  check(es.log.filter((m) => m.type === 'reset').length === 0, `${kind}: EventSource got no reset`);
  const evs = changesOf(es.log, 'sse');
  const seqs = evs.map((e) => String(e.row.seq));
  const dups = seqs.filter((x, i) => seqs.indexOf(x) !== i);
  const missing = since.filter((x) => !seqs.includes(x));
  check(dups.length === 0 && missing.length === 0 && seqs.length === since.length,
    `${kind}: EventSource: zero lost, zero duplicated`, `${dups.length} duplicates ${dups.slice(0, 10)}, ${missing.length} missing ${missing.slice(0, 10)}`);
  check(evs.every((e, i) => i === 0 || eid(e.event) > eid(evs[i - 1].event)), `${kind}: EventSource: event ids increase`);
  note(`EventSource: ${welcomes.length} connections, ${evs.length} changes`);
  es.close();
  for (const s of subs) s.drop();
  await db.end();
}

async function dropext() {
  const db = await connectDb();
  await setup(db);
  const srv = await serverInfo(db);
  const tok = await token(srv.secret, { sub: 'dropext' });
  const slots = async () => Number((await db.query('SELECT count(*) AS n FROM pg_replication_slots')).rows[0].n);
  const c = await wsClient({ port: srv.port, tok });
  const epoch1 = c.welcome.epoch;
  c.send({ type: 'subscribe', id: 'd', subscription: SUB, params: { g: 1 } });
  await c.next((m) => m.type === 'subscribed', 10000, 'subscribed');
  await db.query("INSERT INTO crash_log (g, pad) VALUES (1, 'before drop')");
  const e = await c.next((m) => m.type === 'change', 10000, 'a change');
  check((await slots()) === 1, 'dropext: the server has its slot', `${await slots()} slots`);
  await db.query('DROP EXTENSION rtsub CASCADE');
  await checkBlock('dropext: DROP EXTENSION leaves no replication slot (within 10 s)', () =>
    until(async () => (await slots()) === 0, 'no slot', 10000, 100));
  await sleep(2000);
  check((await slots()) === 0, 'dropext: and none comes back while the extension is gone', `${await slots()} slots`);
  c.terminate();
  await db.query('CREATE EXTENSION rtsub');
  await checkBlock('dropext: CREATE EXTENSION again: the server runs with a slot again', async () => {
    await until(async () => (await db.query('SELECT rtsub.wait_until_running(1000) AS up')).rows[0].up, 'running', 30000, 200);
    await until(async () => (await slots()) === 1, 'the slot', 30000, 200);
  });
  await setup(db);
  const c2 = await until(async () => { try { return await wsClient({ port: srv.port, tok }); } catch { return null; } },
    'a WebSocket connection', 30000, 300);
  const epoch2 = c2.welcome.epoch;
  check(/^[0-9a-f]{16}$/.test(epoch2) && epoch2 !== epoch1, 'dropext: a new epoch', `${epoch1} then ${epoch2}`);
  c2.send({ type: 'subscribe', id: 'd', subscription: SUB, params: { g: 1 }, resume: { epoch: epoch1, after: e.event } });
  const m = await c2.next((x) => x.id === 'd' || x.ref === 'd', 10000, 'the answer to the resume');
  check(m.type === 'reset' && m.reason === 'epoch_changed', 'dropext: resuming with the old epoch: reset epoch_changed', short(m));
  c2.send({ type: 'subscribe', id: 'd2', subscription: SUB, params: { g: 1 } });
  const s = await c2.next((x) => x.id === 'd2' || x.ref === 'd2', 10000, 'subscribed');
  await db.query("INSERT INTO crash_log (g, pad) VALUES (1, 'after create')");
  const ch = s.type === 'subscribed' ? await c2.next((x) => x.type === 'change' && x.id === 'd2', 10000, 'a change') : null;
  check(ch?.row?.pad === 'after create', 'dropext: a new subscription streams again', short(s));
  c2.close();
  await db.end();
}

try {
  if (mode === 'setup') {
    const db = await connectDb();
    await setup(db);
    await db.end();
    check(true, 'setup');
  } else if (['kill9', 'immediate', 'fast'].includes(mode)) {
    await crash(mode);
  } else if (mode === 'dropext') {
    await dropext();
  } else {
    check(false, `unknown mode ${mode}`);
  }
} catch (err) {
  check(false, `${mode}: ran to the end`, err.stack);
}
process.exit(failures ? 1 : 0);
