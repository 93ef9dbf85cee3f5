// clients/js/bench/apply.mjs — how fast the client applies changes: an
// in-process mock server (test/_mock.mjs) streams N changes (inserts, then
// updates of the same rows) to one view; prints changes per second for
// JSON and MessagePack, and the time a snapshot of N rows takes to become
// the view. Node + ws; no database needed.
//   node bench/apply.mjs [N=20000]
import WebSocket from 'ws';
import { createClient } from '../src/index.js';
import { mockServer } from '../test/_mock.mjs';

const N = Number(process.argv[2] ?? 20000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

for (const format of ['json', 'msgpack']) {
  const mock = await mockServer({ chunkRows: 1000 });
  for (let i = 0; i < N; i++) mock.state.rows.set(i, { id: i, org: 1, title: `row ${i}`, done: false });
  const client = createClient({ url: mock.url, token: 't', WebSocket, format, persist: false });
  let t0 = performance.now();
  const view = client.subscribe('s', { org: 1 });
  await view.ready;
  const snap = performance.now() - t0;
  let seen = 0;
  view.on('update', () => { seen++; });
  t0 = performance.now();
  for (let i = 0; i < N; i += 100) {
    const tx = [];
    for (let j = i; j < Math.min(N, i + 100); j++) tx.push(['update', { id: j, org: 1, title: `row ${j}'`, done: true }]);
    mock.commit(...tx);
    if (i % 2000 === 0) await sleep(0);
  }
  while (seen < N) await sleep(5);
  const t = performance.now() - t0;
  console.log(`${format}: snapshot of ${N} rows live in ${snap.toFixed(0)} ms; ${N} updates applied in ${t.toFixed(0)} ms = ${Math.round(N / (t / 1000))} changes/s`);
  client.close();
  mock.close();
}
