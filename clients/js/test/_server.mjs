// Helpers for the tests that run against the rtsub server of the shared
// test cluster (test/run starts it and sets PGHOST/PGPORT/PGUSER/PGDATABASE):
// a pg connection, the server's port and JWT secret, tokens, fixtures.
import * as jose from 'jose';
import pg from 'pg';
import assert from 'node:assert/strict';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function server() {
  const db = new pg.Client({ database: process.env.PGDATABASE ?? 'postgres' });
  await db.connect();
  // a server crash restarts PostgreSQL: let the tests fail on it, not the process
  db.on('error', (e) => console.log(`database connection lost: ${e.message}`));
  const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  assert.ok(secret, 'test/cluster.conf sets rtsub.jwt_secret');
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(60000) AS up')).rows[0].up, true);
  const key = new TextEncoder().encode(secret);
  return {
    db,
    port,
    url: `http://127.0.0.1:${port}`,
    /** a signed HS256 token; ttl seconds */
    async token(claims = {}, ttl = 3600) {
      return new jose.SignJWT({ role: 'rtc_user', ...claims })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setIssuedAt()
        .setExpirationTime(Math.floor(Date.now() / 1000) + ttl)
        .sign(key);
    },
  };
}

/** Table rtc_items (id, org, title, done, version) and subscription rtc_org (param org). */
export async function fixtures(db) {
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rtc_user') THEN CREATE ROLE rtc_user; END IF;
    END $$`);
  await db.query('DROP TABLE IF EXISTS rtc_items CASCADE');
  await db.query(`CREATE TABLE rtc_items (id int PRIMARY KEY, org int NOT NULL, title text,
                    done bool NOT NULL DEFAULT false, version int NOT NULL DEFAULT 1)`);
  await db.query('GRANT SELECT ON rtc_items TO rtc_user');
  await db.query("SELECT rtsub.publish('rtc_items', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('rtc_org', 'rtc_items',
      filter => 'org = params.org', params => '{"org": "integer"}', roles => '{rtc_user}')`);
}

/** Resolves when pred() is true (polled), else fails after ms. */
export async function until(pred, ms = 10000, what = 'a condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const ids = (view) => view.rows().map((r) => r.id).join(',');
