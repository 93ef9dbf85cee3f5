// clients/js/demo/server.mjs — the web side of the rtsub demo (test/demo):
// serves the demo page (index.html), the client's ES modules and
// @msgpack/msgpack, /token (an HS256 JWT for the demo role, as an
// application's login would hand out) and /write (the application's write
// endpoint the page's write function posts to: INSERT / UPDATE / DELETE on
// items, with pg).
//
//   node server.mjs   env: DEMO_WEB_PORT (8000), DEMO_RTSUB_URL (the rtsub
//                     server, http://127.0.0.1:8710), DEMO_JWT_SECRET,
//                     DEMO_ROLE (demo_user), PGHOST/PGPORT/PGUSER, PGDATABASE
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, '..');
const port = Number(process.env.DEMO_WEB_PORT ?? 8000);
const rtsubUrl = process.env.DEMO_RTSUB_URL ?? 'http://127.0.0.1:8710';
const secret = process.env.DEMO_JWT_SECRET;
const role = process.env.DEMO_ROLE ?? 'demo_user';
if (!secret) { console.error('DEMO_JWT_SECRET is not set'); process.exit(2); }

const db = new pg.Pool({ database: process.env.PGDATABASE ?? 'demo', max: 2 });

const b64url = (b) => Buffer.from(b).toString('base64url');
function jwt(claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const roots = {
  '/src/': path.join(pkg, 'src'),
  '/node_modules/@msgpack/msgpack/': path.join(pkg, 'node_modules/@msgpack/msgpack'),
  '/': here,
};
const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html; charset=utf-8', '.css': 'text/css' };

async function write(m) {
  const id = m.keyValues?.[0];
  if (m.op === 'insert') {
    await db.query('INSERT INTO items (org_id, name, price) VALUES ($1, $2, $3)', [m.row.org_id, m.row.name, m.row.price ?? null]);
  } else if (m.op === 'update') {
    const cols = Object.keys(m.patch).filter((k) => ['name', 'price', 'org_id'].includes(k));
    if (cols.length) {
      await db.query(`UPDATE items SET ${cols.map((k, i) => `${k} = $${i + 2}`).join(', ')}, updated_at = now() WHERE id = $1`,
        [id, ...cols.map((k) => m.patch[k])]);
    }
  } else if (m.op === 'delete') {
    await db.query('DELETE FROM items WHERE id = $1', [id]);
  } else {
    throw new Error(`unknown op ${m.op}`);
  }
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  try {
    if (url.pathname === '/config.json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ rtsubUrl }));
      return;
    }
    if (url.pathname === '/token') {
      const now = Math.floor(Date.now() / 1000);
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      res.end(jwt({ role, sub: 'demo', iat: now, exp: now + 600 }));
      return;
    }
    if (url.pathname === '/write' && req.method === 'POST') {
      let body = '';
      for await (const c of req) body += c;
      await write(JSON.parse(body));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
      return;
    }
    if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
    const p = url.pathname === '/' ? '/index.html' : url.pathname;
    for (const [prefix, dir] of Object.entries(roots)) {
      if (!p.startsWith(prefix)) continue;
      const file = path.join(dir, decodeURIComponent(p.slice(prefix.length)));
      if (!file.startsWith(dir)) break;
      const data = await fs.promises.readFile(file);
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
      res.end(data);
      return;
    }
    res.writeHead(404);
    res.end('not found');
  } catch (e) {
    res.writeHead(e.code === 'ENOENT' ? 404 : 500, { 'content-type': 'text/plain' });
    res.end(String(e.message ?? e));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`demo page: http://localhost:${port}/`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(); db.end(); process.exit(0); });
