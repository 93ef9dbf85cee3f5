// test/bench/loadgen.mjs — a WebSocket load generator for the rtsub server:
// opens and holds many authenticated client connections (10,000 on a
// 2-core machine), each optionally with one subscription, and records what
// happens to them (welcome, subscribed, changes, errors, close codes).
//
// Used as a library (benchmarks, test/node/shutdown.test.mjs):
//
//   import { openClients, signer } from './loadgen.mjs';
//   const pool = await openClients({
//     port, count: 10000,
//     token: signer(secret, (i) => ({ role: 'r', sub: `user${i}` })),
//     subscribe: (i) => ({ subscription: 'name', params: {} }),
//     onMessage: (i, msg) => {},      // optional, every parsed message
//     raw: false,                     // true: after the ack, onMessage gets Buffers
//   });
//   pool.summary()   // { open, subscribed, failed, closed, closeCodes, errors }
//   await pool.waitClosed(ms)        // until every socket is closed
//   pool.terminate()                 // drop every socket (no close frame)
//
// or as a command (several processes; prints one JSON line per event):
//
//   node loadgen.mjs --port P --secret S --count 10000 [--procs 2]
//        [--role R] [--subscription NAME] [--params JSON]
//        [--protocol rtsub.v1.json|rtsub.v1.msgpack] [--sources N]
//        [--concurrency 256] [--hold SECONDS]
//   -> {"event":"ready","open":...,"subscribed":...,"failed":...,"ms":...}
//      then holds the connections until stdin gets a line "stop", SIGTERM,
//      --hold seconds, or until the server closed them all; then
//   -> {"event":"closed","closeCodes":{"1001":...},...}
//
// How it holds 10,000 connections:
// * the `ws` client, no permessage-deflate (no zlib context per socket:
//   about 10 kB of client heap per idle connection);
// * source addresses spread over 127.0.0.2 .. 127.0.0.(1+sources), at most
//   `perSource` (default 8,000) connections each: every (source address,
//   destination) pair has its own ephemeral port range (32768-60999 here),
//   so neither 10k live sockets nor TIME_WAIT left by earlier runs exhaust
//   it;
// * at most `concurrency` handshakes in flight (the server's listen backlog
//   is not flooded), each with a generous timeout;
// * the open-files limit: run under `ulimit -n` >= count + 100 (the command
//   raises its soft limit to the hard limit itself when it can: Node cannot,
//   so test/bench/run-eval raises it for the shell; --procs splits the
//   sockets over several processes).
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as jose from 'jose';
import WebSocket from 'ws';
import { encode as mpEncode, decode as mpDecode } from '@msgpack/msgpack';

export const JSON_P = 'rtsub.v1.json';
export const MSGPACK_P = 'rtsub.v1.msgpack';

// token(i) for openClients: HS256 tokens with claims(i), valid for an hour
export function signer(secret, claims) {
  const key = new TextEncoder().encode(secret);
  return (i) => new jose.SignJWT(claims(i)).setProtectedHeader({ alg: 'HS256' })
    .setIssuedAt().setExpirationTime('1h').sign(key);
}

/*
 * One client.  Resolves once it is subscribed (or welcomed, without a
 * subscription), or failed; never rejects.  The record stays live: its
 * close code and time are filled in when the socket closes.
 */
function openOne(i, o, rec) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (ok, why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (!ok) { rec.failed = why; }
      resolve(rec);
    };
    const timer = setTimeout(() => {
      settle(false, 'timeout');
      try { rec.ws.terminate(); } catch { /* */ }
    }, o.timeoutMs);
    Promise.resolve(o.token(i)).then((tok) => {
      const opts = {
        headers: { Authorization: `Bearer ${tok}` },
        perMessageDeflate: false,
        maxPayload: o.maxPayload,
        handshakeTimeout: o.timeoutMs,
      };
      if (o.sources > 0) opts.localAddress = `127.0.0.${2 + Math.floor(i / o.perSource) % o.sources}`;
      const ws = new WebSocket(`ws://${o.host}:${o.port}${o.path}`, o.protocol, opts);
      rec.ws = ws;
      const binary = o.protocol === MSGPACK_P;
      ws.on('error', (e) => { rec.error = e.message; settle(false, e.message); });
      ws.on('unexpected-response', (req, res) => {
        settle(false, `http ${res.statusCode}`);
        req.destroy();
      });
      ws.on('close', (code, reason) => {
        rec.closeCode = code;
        rec.closeReason = reason.toString();
        rec.closedAt = performance.now();
        o.onClose?.(i, rec);
        settle(false, `closed ${code}`);
      });
      ws.on('message', (data, isBinary) => {
        rec.messages++;
        rec.bytes += data.length;
        // raw: once subscribed (or welcomed, without a subscription), the
        // messages go to onMessage unparsed (a Buffer)
        if (o.raw && settled) { o.onMessage?.(i, data, rec); return; }
        let m;
        try { m = binary || isBinary ? mpDecode(data) : JSON.parse(data.toString()); }
        catch (e) { rec.error = `bad message: ${e.message}`; return; }
        if (m.type === 'welcome') {
          rec.welcome = m;
          const sub = o.subscribe?.(i);
          if (!sub) settle(true);
          else {
            const msg = { type: 'subscribe', id: 's', params: {}, ...sub };
            ws.send(binary ? mpEncode(msg) : JSON.stringify(msg));
          }
        } else if (m.type === 'subscribed') {
          rec.subscribed = m;
          settle(true);
        } else if (m.type === 'error') {
          rec.errors.push(m.code);
          if (!rec.subscribed) settle(false, `error ${m.code}`);
        } else if (m.type === 'change') {
          rec.changes++;
        }
        o.onMessage?.(i, m, rec);
      });
    }, (e) => settle(false, `token: ${e.message}`));
  });
}

/*
 * Open `count` clients, `concurrency` handshakes at a time.  Resolves to a
 * pool once every client is subscribed or failed.
 */
export async function openClients(options) {
  const o = {
    host: '127.0.0.1', path: '/v1/ws', protocol: JSON_P,
    concurrency: 256, timeoutMs: 30000, perSource: 8000, sources: undefined,
    maxPayload: 256 * 1024 * 1024, first: 0, raw: false,
    ...options,
  };
  if (!o.port || !o.count || !o.token) throw new Error('openClients: port, count and token are required');
  if (o.sources === undefined) o.sources = Math.ceil((o.first + o.count) / o.perSource);
  const records = [];
  const t0 = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < o.count) {
      const k = next++;
      const rec = { i: o.first + k, ws: null, messages: 0, bytes: 0, changes: 0, errors: [] };
      records[k] = rec;
      await openOne(o.first + k, o, rec);
      if (o.progress && (k + 1) % o.progress === 0) o.onProgress?.(k + 1);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, o.count) }, lane));
  const pool = {
    records,
    openMs: performance.now() - t0,
    summary() {
      const s = { count: records.length, open: 0, welcomed: 0, subscribed: 0, failed: 0, closed: 0,
        closeCodes: {}, failures: {}, errors: {} };
      for (const r of records) {
        if (r.ws && r.ws.readyState === WebSocket.OPEN) s.open++;
        if (r.welcome) s.welcomed++;
        if (r.subscribed) s.subscribed++;
        if (r.failed && !r.subscribed && !(r.welcome && !o.subscribe)) {
          s.failed++;
          s.failures[r.failed] = (s.failures[r.failed] || 0) + 1;
        }
        if (r.closeCode !== undefined) {
          s.closed++;
          s.closeCodes[r.closeCode] = (s.closeCodes[r.closeCode] || 0) + 1;
        }
        for (const e of r.errors) s.errors[e] = (s.errors[e] || 0) + 1;
      }
      return s;
    },
    // resolves true once every socket is closed, false after ms
    async waitClosed(ms) {
      const end = performance.now() + ms;
      while (performance.now() < end) {
        if (records.every((r) => !r.ws || r.ws.readyState === WebSocket.CLOSED)) return true;
        await new Promise((r) => setTimeout(r, 20));
      }
      return false;
    },
    terminate() {
      for (const r of records) if (r.ws) r.ws.terminate();
    },
    close(code = 1000) {
      for (const r of records) if (r.ws && r.ws.readyState === WebSocket.OPEN) r.ws.close(code);
    },
  };
  return pool;
}

/*
 * Several processes: each child opens its share (with distinct source
 * addresses) and reports.  Returns { ready: Promise<summary>, stop(),
 * closed: Promise<summary> } aggregated over the children.
 */
export function forkClients({ procs, count, args }) {
  const self = fileURLToPath(import.meta.url);
  const children = [];
  const readies = [];
  const closeds = [];
  const per = Math.ceil(count / procs);
  for (let p = 0; p < procs; p++) {
    const n = Math.min(per, count - p * per);
    if (n <= 0) break;
    const child = fork(self, ['--child', '--first', String(p * per), '--count', String(n), ...args],
      { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(child);
    readies.push(new Promise((resolve, reject) => {
      child.on('message', (m) => { if (m.event === 'ready') resolve(m); });
      child.on('exit', (c) => reject(new Error(`loadgen child exited with ${c}`)));
    }));
    closeds.push(new Promise((resolve) => {
      child.on('message', (m) => { if (m.event === 'closed') resolve(m); });
      child.on('exit', () => resolve(null));
    }));
  }
  const merge = (list) => {
    const out = { event: list[0]?.event, procs: list.length };
    for (const m of list) {
      if (!m) continue;
      for (const [k, v] of Object.entries(m)) {
        if (typeof v === 'number') out[k] = (k === 'ms' || k === 'msSinceReady') ? Math.max(out[k] || 0, v) : (out[k] || 0) + v;
        else if (v && typeof v === 'object') {
          out[k] = out[k] || {};
          for (const [kk, vv] of Object.entries(v)) out[k][kk] = (out[k][kk] || 0) + vv;
        }
      }
    }
    return out;
  };
  return {
    children,
    ready: Promise.all(readies).then(merge),
    closed: Promise.all(closeds).then((l) => merge(l.filter(Boolean))),
    stop() { for (const c of children) if (c.connected) c.send('stop'); },
  };
}

// ---------------------------------------------------------------- command
function parseArgs(argv) {
  const a = {};
  for (let k = 0; k < argv.length; k++) {
    const m = argv[k].match(/^--([a-z-]+)$/);
    if (!m) throw new Error(`loadgen: unexpected argument ${argv[k]}`);
    if (m[1] === 'child') { a.child = true; continue; }
    a[m[1]] = argv[++k];
  }
  return a;
}

async function child(a) {
  const pool = await openClients({
    port: Number(a.port),
    host: a.host || '127.0.0.1',
    count: Number(a.count),
    first: Number(a.first || 0),
    protocol: a.protocol || JSON_P,
    concurrency: Number(a.concurrency || 256),
    sources: a.sources === undefined ? undefined : Number(a.sources),
    token: signer(a.secret, (i) => ({ role: a.role || 'rt_bench', sub: `user${i}` })),
    subscribe: a.subscription ? () => ({ subscription: a.subscription, params: JSON.parse(a.params || '{}') }) : null,
  });
  const s = pool.summary();
  const ready = { event: 'ready', ms: Math.round(pool.openMs), open: s.open, welcomed: s.welcomed,
    subscribed: s.subscribed, failed: s.failed, failures: s.failures, errors: s.errors };
  let finished = false;
  const finish = async () => {
    if (finished) return;
    finished = true;
    pool.terminate();
    await pool.waitClosed(5000);
    const f = pool.summary();
    const m = { event: 'closed', closed: f.closed, closeCodes: f.closeCodes };
    if (process.send) process.send(m); else console.log(JSON.stringify(m));
    process.exit(0);
  };
  if (process.send) {
    process.send(ready);
    process.on('message', (m) => { if (m === 'stop') finish(); });
    process.on('disconnect', finish);
  } else {
    console.log(JSON.stringify(ready));
  }
  // report when the server has closed every socket (e.g. it shut down)
  const closedByServer = async () => {
    const start = performance.now();
    while (!finished) {
      await new Promise((r) => setTimeout(r, 50));
      if (pool.records.every((r) => !r.ws || r.ws.readyState === WebSocket.CLOSED)) {
        const s2 = pool.summary();
        const m = { event: 'closed', closed: s2.closed, closeCodes: s2.closeCodes,
          msSinceReady: Math.round(performance.now() - start) };
        finished = true;
        if (process.send) process.send(m); else console.log(JSON.stringify(m));
        process.exit(0);
      }
    }
  };
  closedByServer();
  return finish;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (!a.port || !a.secret || !a.count) {
    console.error('usage: node loadgen.mjs --port P --secret S --count N [--procs K] [--role R] [--subscription NAME] [--params JSON] [--protocol P] [--sources N] [--concurrency C] [--hold SECONDS]');
    process.exit(2);
  }
  if (a.child) { await child(a); return; }
  const procs = Number(a.procs || 1);
  const pass = [];
  for (const k of ['port', 'host', 'secret', 'role', 'subscription', 'params', 'protocol', 'sources', 'concurrency'])
    if (a[k] !== undefined) pass.push(`--${k}`, a[k]);
  const fc = forkClients({ procs, count: Number(a.count), args: pass });
  console.log(JSON.stringify(await fc.ready));
  const stop = () => fc.stop();
  process.stdin.on('data', (d) => { if (/stop/.test(d.toString())) stop(); });
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (a.hold) setTimeout(stop, Number(a.hold) * 1000);
  console.log(JSON.stringify(await fc.closed));
  process.exit(0);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
