// test/bench/procstat.mjs — small helpers of the server benchmarks: the
// rtsub server worker's pid, memory and CPU time from /proc, and the
// server's Prometheus metrics.
import { openSync, readSync, closeSync, readdirSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';

// the pid of the "rtsub server" background worker (pg: a connected pg.Client)
export async function workerPid(db) {
  const r = await db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'rtsub server'");
  return r.rows.length ? r.rows[0].pid : null;
}

// memory fields of /proc/PID/status, in bytes: VmRSS, RssAnon, RssFile, RssShmem, VmHWM, VmSize
export function memory(pid) {
  const out = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = line.match(/^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM|VmSize|VmData):\s+(\d+) kB/);
    if (m) out[m[1]] = Number(m[2]) * 1024;
  }
  return out;
}

// CPU seconds (user + system) of a process
export function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const x = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(x[11]) + Number(x[12])) / 100;
}

// open file descriptors of a process
export function fdCount(pid) {
  return readdirSync(`/proc/${pid}/fd`).length;
}

// all metrics of /metrics as { name: number } (a fresh connection each
// time; a connection error is retried, and counted in metricsErrors)
export const metricsErrors = [];
function metricsOnce(port, host) {
  return new Promise((resolve, reject) => {
    http.get({ host, port, path: '/metrics', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('error', reject);
      res.on('end', () => {
        const out = {};
        for (const m of body.matchAll(/^([a-z_]+) ([0-9.e+-]+)$/gm)) out[m[1]] = Number(m[2]);
        if (!('rtsub_up' in out)) reject(new Error(`incomplete /metrics response (${res.statusCode}, ${body.length} bytes)`));
        else resolve(out);
      });
    }).on('error', reject);
  });
}
export async function metrics(port, host = '127.0.0.1') {
  for (let k = 0; ; k++) {
    try {
      return await metricsOnce(port, host);
    } catch (e) {
      metricsErrors.push(e.code || e.message);
      if (k >= 4) throw e;
      await sleep(50);
    }
  }
}

export const MB = (b) => (b / 1048576).toFixed(1);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/*
 * The memory contexts of a backend (pg_log_backend_memory_contexts, read
 * back from the server log: RTSUB_SERVER_LOG).  Returns { grand: bytes,
 * contexts: { name: [{ level, total, used }] } } or null when the log
 * cannot be read.  PostgreSQL logs at most 100 children per context (the
 * rest are summed up in one line), so per-name lists are samples.
 */
export async function memoryContexts(db, pid, logfile = process.env.RTSUB_SERVER_LOG) {
  if (!logfile) return null;
  let from;
  try { from = statSync(logfile).size; } catch { return null; }
  await db.query('SELECT pg_log_backend_memory_contexts($1)', [pid]);
  for (let k = 0; k < 100; k++) {
    await sleep(100);
    const size = statSync(logfile).size;
    const buf = Buffer.alloc(size - from);
    const fd = openSync(logfile, 'r');
    readSync(fd, buf, 0, buf.length, from);
    closeSync(fd);
    const text = buf.toString('utf8');
    const grand = text.match(new RegExp(`\\[${pid}\\] LOG:  Grand total: (\\d+) bytes`));
    if (!grand) continue;
    const contexts = {};
    const re = new RegExp(`\\[${pid}\\] LOG:  level: (\\d+); ([^:]+): (\\d+) total in \\d+ blocks; \\d+ free \\(\\d+ chunks\\); (\\d+) used`, 'g');
    for (const m of text.matchAll(re)) {
      (contexts[m[2]] = contexts[m[2]] || []).push({ level: Number(m[1]), total: Number(m[3]), used: Number(m[4]) });
    }
    return { grand: Number(grand[1]), contexts };
  }
  return null;
}

// the median of a list of numbers
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

// the 1-minute load average and the number of CPUs, e.g. "1.52 on 2 CPUs"
export function loadavg() {
  return `${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]} on ${readFileSync('/proc/cpuinfo', 'utf8').match(/^processor/gm).length} CPUs`;
}
