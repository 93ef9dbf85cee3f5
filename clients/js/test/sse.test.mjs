// The client over Server-Sent Events (transport: 'sse', one stream per
// subscription, read with fetch) in Node against the rtsub server of the
// shared test cluster: snapshot, then changes in order; a dropped stream
// reconnects with Last-Event-ID and resumes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../src/index.js';
import { server, fixtures, until, sleep, ids } from './_server.mjs';

let S;
const clients = [];
before(async () => {
  S = await server();
  await fixtures(S.db);
});
after(async () => {
  for (const c of clients) c.close();
  await S.db.query('DROP TABLE IF EXISTS rtc_items CASCADE').catch(() => {});
  await S.db.end().catch(() => {});
});

test('sse: snapshot, then inserts, updates, deletes in order', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'other org')`);
  const c = createClient({ url: S.url, transport: 'sse', token: () => S.token({}) });
  clients.push(c);
  const events = [];
  const view = c.subscribe('rtc_org', { org: 1 }, {
    onInsert: (r) => events.push(`insert:${r.id}`),
    onUpdate: (r) => events.push(`update:${r.id}:${r.title}`),
    onDelete: (r) => events.push(`delete:${r.id}`),
  });
  await view.ready;
  assert.equal(ids(view), '1,2');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (4, 1, 'd')`);
  await S.db.query(`UPDATE rtc_items SET title = 'a2' WHERE id = 1`);
  await S.db.query(`UPDATE rtc_items SET org = 2 WHERE id = 2`);
  await until(() => events.length >= 5, 10000, `5 events, have ${events}`);
  assert.deepEqual(events, ['insert:1', 'insert:2', 'insert:4', 'update:1:a2', 'delete:2']);
  c.close();
});

test('sse: a dropped stream reconnects with Last-Event-ID and resumes', { timeout: 60000 }, async () => {
  await S.db.query('TRUNCATE rtc_items');
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (1, 1, 'a')`);
  const c = createClient({ url: S.url, transport: 'sse', token: () => S.token({}), backoff: { base: 400, max: 2000 } });
  clients.push(c);
  const view = c.subscribe('rtc_org', { org: 1 });
  await view.ready;
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (2, 1, 'b')`);
  await until(() => view.get(2), 10000, 'row 2');
  c.reconnect();
  await S.db.query(`INSERT INTO rtc_items (id, org, title) VALUES (3, 1, 'c')`);
  await until(() => view.get(3), 15000, 'the change made while away');
  const st = c.info().stats;
  assert.equal(st.resumed, 1, `resumed (${JSON.stringify(st)})`);
  assert.equal(st.snapshots, 1);
  assert.equal(ids(view), '1,2,3');
  await sleep(100);
  c.close();
});
