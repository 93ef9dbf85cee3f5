// Harness of the browser tests: a tiny static HTTP server (the client's
// ES modules, @msgpack/msgpack, the test page; /token mints a JWT, /write
// applies a write with pg: the application backend of the tests), and
// headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// that reaches the static server as http://allowed.example — the origin
// the shared test cluster allows (test/cluster.conf) — through
// --host-resolver-rules. The origin is marked secure so that Web Locks
// exist (browsers offer them on https and localhost only).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import * as jose from 'jose';
import pg from 'pg';

const here = path.dirname(fileURLToPath(import.meta.url));
const clientDir = path.resolve(here, '../..');
export const ORIGIN = 'http://allowed.example';
const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html', '.json': 'application/json', '.css': 'text/css' };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Serves `roots` ({'/prefix/': dir}) plus /token and /write. */
export async function staticServer({ roots, token, write }) {
  const srv = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    try {
      if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
      if (url.pathname === '/token') {
        res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
        res.end(await token(url));
        return;
      }
      if (url.pathname === '/write' && req.method === 'POST') {
        let body = '';
        for await (const c of req) body += c;
        const out = await write(JSON.parse(body));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(out ?? {}));
        return;
      }
      for (const [prefix, dir] of Object.entries(roots)) {
        if (!url.pathname.startsWith(prefix)) continue;
        const file = path.join(dir, decodeURIComponent(url.pathname.slice(prefix.length)));
        if (!file.startsWith(dir)) break;
        const data = await fs.promises.readFile(file);
        res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
        res.end(data);
        return;
      }
      res.writeHead(404);
      res.end('not found');
    } catch (e) {
      res.writeHead(e.status ?? (e.code === 'ENOENT' ? 404 : 500), { 'content-type': 'text/plain' });
      res.end(String(e.message ?? e));
    }
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { server: srv, port: srv.address().port, close: () => new Promise((r) => srv.close(r)) };
}

/** The shared cluster's server, a static server and Chromium. */
export async function setup() {
  const db = new pg.Client({ database: process.env.PGDATABASE ?? 'postgres' });
  await db.connect();
  db.on('error', (e) => console.log(`database connection lost: ${e.message}`));
  const port = Number((await db.query('SHOW rtsub.port')).rows[0]['rtsub.port']);
  const secret = (await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'];
  await db.query('CREATE EXTENSION IF NOT EXISTS rtsub');
  assert.equal((await db.query('SELECT rtsub.wait_until_running(60000) AS up')).rows[0].up, true);
  const key = new TextEncoder().encode(secret);
  const mint = (claims = {}, ttl = 3600) => new jose.SignJWT({ role: 'rtb_user', ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttl).sign(key);
  const writes = [];
  const control = { failWrites: false };
  const web = await staticServer({
    roots: { '/src/': path.join(clientDir, 'src') + '/', '/node_modules/': path.join(clientDir, 'node_modules') + '/', '/': here + '/' },
    token: () => mint({}),
    // the application's write endpoint: UPDATE/INSERT/DELETE of rtb_items
    write: async (m) => {
      if (control.failWrites) throw Object.assign(new Error('the backend is down'), { status: 503 });
      writes.push(m);
      if (m.op === 'update') {
        const cols = Object.keys(m.patch).filter((k) => k !== 'id' && k !== 'version');
        await db.query(`UPDATE rtb_items SET ${cols.map((k, i) => `${k} = $${i + 2}`).join(', ')},
            version = version + 1 WHERE id = $1`, [m.keyValues[0], ...cols.map((k) => m.patch[k])]);
      } else if (m.op === 'insert') {
        await db.query('INSERT INTO rtb_items (id, org, title) VALUES ($1, $2, $3)', [m.row.id, m.row.org, m.row.title]);
      } else if (m.op === 'delete') {
        await db.query('DELETE FROM rtb_items WHERE id = $1', [m.keyValues[0]]);
      }
      return { ok: true };
    },
  });
  const browser = await chromium.launch({
    executablePath: process.env.RTSUB_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      `--host-resolver-rules=MAP allowed.example:80 127.0.0.1:${web.port}`,
      `--unsafely-treat-insecure-origin-as-secure=${ORIGIN}`,
    ],
  });
  return {
    db, port, serverUrl: `http://127.0.0.1:${port}`, web, browser, writes, mint, control,
    async metric(name) {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
      return m ? Number(m[1]) : null;
    },
    async close() {
      await browser.close();
      await web.close();
      await db.end();
    },
  };
}

/** Table rtb_items and subscription rtb_org (param org) for the tests. */
export async function fixtures(db) {
  await db.query(`DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rtb_user') THEN CREATE ROLE rtb_user; END IF;
    END $$`);
  await db.query('DROP TABLE IF EXISTS rtb_items CASCADE');
  await db.query(`CREATE TABLE rtb_items (id int PRIMARY KEY, org int NOT NULL, title text,
                    done bool NOT NULL DEFAULT false, version int NOT NULL DEFAULT 1)`);
  await db.query('GRANT SELECT ON rtb_items TO rtb_user');
  await db.query("SELECT rtsub.publish('rtb_items', replica_identity_full => true)");
  await db.query(`SELECT rtsub.create_subscription('rtb_org', 'rtb_items',
      filter => 'org = params.org', params => '{"org": "integer"}', roles => '{rtb_user}')`);
}

/**
 * Opens the test page in a new tab of `context` and, in it, a client
 * (window.client) with a subscription to rtb_org (window.view); every view
 * event is logged in window.log with its Date.now().
 */
export async function openTab(context, serverUrl, { format = 'json', org = 1, channel = 'test', options = {} } = {}) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`console: ${m.text()}`); });
  await page.goto(`${ORIGIN}/page.html`);
  await page.waitForFunction(() => window.rtsubLoaded === true);
  await page.evaluate(({ serverUrl, format, org, channel, options }) => {
    window.log = [];
    const rec = (op) => (row, meta) => window.log.push({ op, id: row.id, title: row.title, source: meta?.source, at: Date.now() });
    window.client = window.rtsub.createClient({
      url: serverUrl, format, channel, ...options,
      token: async () => (await fetch('/token')).text(),
      write: async (m) => {
        const r = await fetch('/write', { method: 'POST', body: JSON.stringify(m) });
        if (!r.ok) throw new Error(`write failed: ${r.status}`);
        return r.json();
      },
    });
    window.leaderEvents = [];
    window.client.on('leader', () => window.leaderEvents.push(Date.now()));
    window.view = window.client.subscribe('rtb_org', { org }, {
      onInsert: rec('insert'), onUpdate: rec('update'), onDelete: rec('delete'),
      onLive: () => window.log.push({ op: 'live', at: Date.now() }),
      onCache: () => window.log.push({ op: 'cache', ids: window.view.rows().map((r) => r.id), at: Date.now() }),
    });
  }, { serverUrl, format, org, channel, options });
  return page;
}

export const ids = (page) => page.evaluate(() => window.view.rows().map((r) => r.id).join(','));
export const info = (page) => page.evaluate(() => window.client.info());

export async function until(fn, ms = 15000, what = 'a condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
