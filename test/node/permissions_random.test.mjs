// test/node/permissions_random.test.mjs — randomized permission test:
// random permission policies (permissive and restrictive, over the row and
// the claims), clients with random claims and parameters, random writes in
// random transactions; afterwards every client's state, built only from the
// events it received, must equal the SELECT that user would run with those
// claims.  RTSUB_RANDOM_SEED repeats a run; the seed is printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as jose from 'jose';
import pg from 'pg';
import WebSocket from 'ws';

const SEED = Number(process.env.RTSUB_RANDOM_SEED || Date.now() % 1000000);
let rng = SEED;
// a small deterministic PRNG (mulberry32)
function rand() {
  rng |= 0; rng = (rng + 0x6D2B79F5) | 0;
  let t = Math.imul(rng ^ (rng >>> 15), 1 | rng);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const POLICY_TEMPLATES = [
  "org = (rtsub.claims() ->> 'org')::int",
  "owner = rtsub.claim('sub')",
  'level < 5',
  "tag IS DISTINCT FROM 'secret'",
  "level <= coalesce((rtsub.claims() ->> 'clearance')::int, 0)",
  "(current_setting('request.jwt.claims', true)::jsonb ->> 'admin') = 'true'",
];
const SUBS = ['u1', 'u2', 'u3', 'u4'];
const TAGS = [null, 'a', 'b', 'secret'];

let db;
let port;
let secret;
const sockets = [];

before(async () => {
  console.log(`# RTSUB_RANDOM_SEED=${SEED}`);
  db = new pg.Client({ database: 'postgres' });
  await db.connect();
  port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(10000) AS up')).rows[0].up, true);
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rt_rnd_user') THEN CREATE ROLE rt_rnd_user; END IF;
    END $$`);
  await db.query('DROP TABLE IF EXISTS rnd CASCADE');
  await db.query('CREATE TABLE rnd (id int PRIMARY KEY, org int, owner text, level int, tag text)');
  await db.query('GRANT SELECT ON rnd TO rt_rnd_user');
  await db.query("SELECT rtsub.publish('rnd', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('rnd_levels', 'rnd',
      filter => 'level <= params.max_level', params => '{"max_level": "integer"}')`);
});

after(async () => {
  for (const ws of sockets) ws.terminate();
  await db.query('DROP TABLE IF EXISTS rnd CASCADE');
  await db.end();
});

// a client that applies the change events it receives to its own rows
async function client(claims, maxLevel) {
  const tok = await new jose.SignJWT({ role: 'rt_rnd_user', ...claims })
    .setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime('1h')
    .sign(new TextEncoder().encode(secret));
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, 'rtsub.v1.json',
    { headers: { Authorization: `Bearer ${tok}` } });
  sockets.push(ws);
  const rows = new Map();
  const errors = [];
  let resolveAck;
  const ack = new Promise((r) => { resolveAck = r; });
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    if (m.type === 'welcome')
      ws.send(JSON.stringify({ type: 'subscribe', id: 'r', subscription: 'rnd_levels', params: { max_level: maxLevel } }));
    else if (m.type === 'subscribed') resolveAck(m);
    else if (m.type === 'error') { errors.push(m); resolveAck(m); }
    else if (m.type === 'change') {
      if (m.op === 'delete') {
        if (!rows.has(m.row.id)) errors.push({ unexpected: 'delete of a row never seen', m });
        rows.delete(m.row.id);
      } else {
        if (m.op === 'insert' && rows.has(m.row.id)) errors.push({ unexpected: 'insert of a row already seen', m });
        if (m.op === 'update' && !rows.has(m.row.id)) errors.push({ unexpected: 'update of a row never seen', m });
        rows.set(m.row.id, m.row);
      }
    }
  });
  const a = await ack;
  assert.equal(a.type, 'subscribed', JSON.stringify(a));
  return { claims, maxLevel, rows, errors };
}

test(`random policies, claims and writes: every client's state equals its SELECT (seed ${SEED})`, async () => {
  // random policies
  const policies = [];
  const n = int(1, 3);
  for (let i = 0; i < n; i++) {
    const expr = pick(POLICY_TEMPLATES);
    const permissive = i === 0 ? true : rand() < 0.6;
    policies.push({ expr, permissive });
    await db.query('SELECT rtsub.create_policy($1, $2, $3, permissive => $4)',
      ['rnd', `p${i}`, expr, permissive]);
  }

  // clients with random claims
  const clients = [];
  for (let i = 0; i < 8; i++) {
    const claims = { sub: pick(SUBS), org: int(1, 3) };
    if (rand() < 0.5) claims.clearance = int(0, 9);
    if (rand() < 0.2) claims.admin = true;
    clients.push(await client(claims, int(0, 9)));
  }

  // random writes in random transactions
  const live = new Set();
  let nextId = 1;
  for (let t = 0; t < 60; t++) {
    await db.query('BEGIN');
    for (let k = int(1, 6); k > 0; k--) {
      const r = rand();
      if (r < 0.45 || live.size === 0) {
        const id = nextId++;
        await db.query('INSERT INTO rnd VALUES ($1, $2, $3, $4, $5)',
          [id, int(1, 3), pick(SUBS), int(0, 9), pick(TAGS)]);
        live.add(id);
      } else if (r < 0.85) {
        const id = pick([...live]);
        const col = pick(['org', 'owner', 'level', 'tag']);
        const val = { org: int(1, 3), owner: pick(SUBS), level: int(0, 9), tag: pick(TAGS) }[col];
        await db.query(`UPDATE rnd SET ${col} = $2 WHERE id = $1`, [id, val]);
      } else {
        const id = pick([...live]);
        await db.query('DELETE FROM rnd WHERE id = $1', [id]);
        live.delete(id);
      }
    }
    await db.query(rand() < 0.1 ? 'ROLLBACK' : 'COMMIT');
    if (rand() < 0.1) await sleep(int(0, 30));
  }
  // wait until the server has decoded everything
  const lsn = (await db.query('SELECT pg_current_wal_flush_lsn() AS l')).rows[0].l;
  for (let i = 0; i < 200; i++) {
    const r = await db.query("SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'rtsub'", [lsn]);
    if (r.rows[0]?.ok) break;
    await sleep(50);
  }
  await sleep(500);

  // what each user sees with SELECT, with the same claims
  const perm = policies.filter((p) => p.permissive).map((p) => `(${p.expr})`);
  const restr = policies.filter((p) => !p.permissive).map((p) => `(${p.expr})`);
  const where = [`level <= $1`, perm.length ? `(${perm.join(' OR ')})` : 'false',
    ...restr].join(' AND ');
  for (const c of clients) {
    await db.query('SELECT set_config($1, $2, false)', ['request.jwt.claims', JSON.stringify({ role: 'rt_rnd_user', ...c.claims })]);
    const res = await db.query(`SELECT id, org, owner, level, tag FROM rnd
        WHERE coalesce(${where}, false) ORDER BY id`, [c.maxLevel]);
    const want = res.rows.map((r) => JSON.stringify(r));
    const got = [...c.rows.values()].sort((a, b) => a.id - b.id).map((r) => JSON.stringify(r));
    assert.deepEqual(got, want,
      `client ${JSON.stringify(c.claims)} max_level ${c.maxLevel}; policies ${JSON.stringify(policies)}`);
    assert.deepEqual(c.errors, [], 'no protocol anomalies');
  }
  await db.query("SELECT set_config('request.jwt.claims', '', false)");
});
