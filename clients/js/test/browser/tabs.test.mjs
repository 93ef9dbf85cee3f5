// End-to-end tests of the JavaScript client in headless Chromium against
// the rtsub server of the shared test cluster (see _harness.mjs): tabs of
// one origin share one connection and one server subscription per
// distinct subscription (two and three tabs), leader close and failover,
// offline/online with writes queued offline, a reload that shows the
// cached rows at once and resumes, queued writes outliving their tab;
// JSON and MessagePack.
//
// Figures printed (no timed assertions): the delay between the leader's
// view and the other tabs' views for each change, and the failover time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setup, fixtures, openTab, ids, info, until, sleep } from './_harness.mjs';

let H;
before(async () => {
  H = await setup();
  await fixtures(H.db);
});
after(async () => {
  await H.db.query('DROP TABLE IF EXISTS rtb_items CASCADE');
  await H.close();
});

const live = (page) => until(() => page.evaluate(() => window.view.live), 15000, 'the view to be live');
async function leaderOf(pages) {
  const infos = await Promise.all(pages.map(info));
  const leaders = pages.filter((_, i) => infos[i].isLeader);
  assert.equal(leaders.length, 1, `exactly one leader: ${JSON.stringify(infos)}`);
  return leaders[0];
}
function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return `n ${s.length}, median ${s[Math.floor(s.length / 2)]} ms, max ${s.at(-1)} ms`;
}
// for each change (by id+title), the delay of each follower's event after the leader's
async function delays(leader, followers, n) {
  const ll = await leader.evaluate(() => window.log);
  const out = [];
  for (const f of followers) {
    const fl = await f.evaluate(() => window.log);
    for (const e of ll.slice(-n)) {
      const m = fl.find((x) => x.op === e.op && x.id === e.id && x.title === e.title);
      assert.ok(m, `follower saw ${e.op} ${e.id} ${e.title}`);
      out.push(m.at - e.at);
    }
  }
  return out;
}

for (const format of ['json', 'msgpack']) {
  test(`${format}: two, then three tabs share one connection and one server subscription`, { timeout: 120000 }, async () => {
    await H.db.query('TRUNCATE rtb_items');
    await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b'), (50, 2, 'x')`);
    // the sessions of earlier tests are closed (the server notices within a second or so)
    await until(async () => (await H.metric('rtsub_ws_sessions_open')) === 0, 15000, 'no WebSocket sessions left open');
    const context = await H.browser.newContext();
    const a = await openTab(context, H.serverUrl, { format });
    await live(a);
    const b = await openTab(context, H.serverUrl, { format });
    await live(b);
    assert.equal(await ids(a), '1,2');
    assert.equal(await ids(b), '1,2', 'the second tab gets the rows from the leader');
    const leader = await leaderOf([a, b]);
    assert.equal(leader, a, 'the first tab leads');
    assert.equal(await H.metric('rtsub_ws_sessions_open'), 1, 'one WebSocket for two tabs');

    await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (3, 1, 'c')`);
    await until(async () => (await ids(b)) === '1,2,3', 10000, 'row 3 in tab b');

    const c = await openTab(context, H.serverUrl, { format });
    await live(c);
    assert.equal(await ids(c), '1,2,3');
    await leaderOf([a, b, c]);
    assert.equal(await H.metric('rtsub_ws_sessions_open'), 1, 'one WebSocket for three tabs');
    assert.equal((await info(a)).serverSubscriptions, 1, 'one server subscription for three identical ones');

    for (let i = 0; i < 20; i++) {
      await H.db.query(`UPDATE rtb_items SET title = $1 WHERE id = $2`, [`t${i}`, 1 + (i % 3)]);
    }
    await until(async () => (await Promise.all([a, b, c].map((p) => p.evaluate(() => window.view.get(3)?.title))))
      .every((t) => t === 't17'), 10000, 'the updates in every tab');
    assert.equal(await ids(c), '1,2,3');
    const d = await delays(a, [b, c], 20);
    console.log(`${format}: tab view delay after the leader's view, per change and tab: ${stats(d)}`);

    // another subscription in the third tab: a second server subscription
    const org2 = await c.evaluate(async () => {
      const v = window.client.subscribe('rtb_org', { org: 2 });
      await v.ready;
      return v.rows().map((r) => r.id).join(',');
    });
    assert.equal(org2, '50');
    await until(async () => (await info(a)).serverSubscriptions === 2, 5000, 'two server subscriptions');
    await context.close();
  });
}

test('json: the leader tab closes; another takes over, resumes, and every tab goes on', { timeout: 120000 }, async () => {
  await H.db.query('TRUNCATE rtb_items');
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a')`);
  const context = await H.browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    tabs.push(await openTab(context, H.serverUrl));
    await live(tabs[i]);
  }
  const old = await leaderOf(tabs);
  const rest = tabs.filter((p) => p !== old);
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (2, 1, 'b')`);
  for (const p of tabs) await until(async () => (await ids(p)) === '1,2', 10000, 'row 2');

  const t0 = Date.now();
  await old.close();
  // committed while no tab holds the connection
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (3, 1, 'c')`);
  const next = await until(async () => {
    for (const p of rest) {
      const i = await info(p);
      if (i.isLeader && i.status === 'open') return p;
    }
    return null;
  }, 10000, 'a new leader with an open connection');
  const failover = Date.now() - t0;
  const elected = await next.evaluate(() => window.leaderEvents[0]);
  console.log(`failover: new leader elected ${elected - t0} ms, connected ${failover} ms after the leader tab closed`);
  await leaderOf(rest);
  for (const p of rest) await until(async () => (await ids(p)) === '1,2,3', 10000, 'row 3 in every tab');
  const st = (await info(next)).stats;
  assert.equal(st.resumed, 1, `the new leader resumed from its view's last event (${JSON.stringify(st)})`);
  assert.equal(st.snapshots, 0);
  await H.db.query(`UPDATE rtb_items SET title = 'a2' WHERE id = 1`);
  for (const p of rest) await until(() => p.evaluate(() => window.view.get(1).title === 'a2'), 10000, 'update');
  await until(async () => (await H.metric('rtsub_ws_sessions_open')) >= 1, 5000, 'a session');
  await context.close();
});

test('msgpack: offline, then online: changes resume, writes queued offline replay by priority', { timeout: 120000 }, async () => {
  await H.db.query('TRUNCATE rtb_items');
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b')`);
  H.writes.length = 0;
  const context = await H.browser.newContext();
  const a = await openTab(context, H.serverUrl, { format: 'msgpack' });
  await live(a);
  const b = await openTab(context, H.serverUrl, { format: 'msgpack' });
  await live(b);
  const leader = await leaderOf([a, b]);
  const follower = leader === a ? b : a;

  await context.setOffline(true);
  for (const p of [a, b]) {
    await until(() => p.evaluate(() => window.client.status === 'offline' && !window.view.live), 10000, 'offline');
  }
  await H.db.query(`UPDATE rtb_items SET title = 'server' WHERE id = 1`);
  const during = await follower.evaluate(() => {
    window.writes = [
      window.view.update(2, { title: 'offline-normal' }),
      window.view.insert({ id: 3, org: 1, title: 'offline-critical' }, { priority: 'critical' }),
    ];
    return { ids: window.view.rows().map((r) => r.id).join(','), s2: window.view.rowStatus(2),
      s3: window.view.rowStatus(3), status: window.view.status, title2: window.view.get(2).title };
  });
  assert.deepEqual(during, { ids: '1,2,3', s2: 'pending', s3: 'pending', status: 'pending', title2: 'offline-normal' },
    'offline writes show at once, pending');
  await sleep(500);
  assert.equal(H.writes.length, 0, 'nothing written while offline');

  await context.setOffline(false);
  for (const p of [a, b]) {
    await until(() => p.evaluate(() => window.view.live && window.view.get(1)?.title === 'server'), 15000, 'the offline change');
  }
  const res = await follower.evaluate(async () => (await Promise.all(window.writes)).map((r) => r.status));
  assert.deepEqual(res, ['written', 'written']);
  assert.deepEqual(H.writes.map((w) => w.op), ['insert', 'update'], 'the critical write first');
  for (const p of [a, b]) {
    await until(() => p.evaluate(() => window.view.get(3)?.title === 'offline-critical' &&
      window.view.get(2)?.title === 'offline-normal'), 10000, 'the replayed writes from the server');
  }
  await until(() => follower.evaluate(() => window.view.status === 'synced' && window.view.rowStatus(2) === 'synced'),
    10000, 'synced');
  const st = (await info(leader)).stats;
  assert.ok(st.resumed >= 1, `resumed after the offline time (${JSON.stringify(st)})`);
  await context.close();
});

for (const format of ['json', 'msgpack']) {
  test(`${format}: a reloaded tab shows its cached rows at once and resumes from its last id`, { timeout: 120000 }, async () => {
    await H.db.query('TRUNCATE rtb_items');
    await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b')`);
    const context = await H.browser.newContext();
    const page = await openTab(context, H.serverUrl, { format });
    await live(page);
    await H.db.query(`UPDATE rtb_items SET title = 'b2' WHERE id = 2`);
    await until(() => page.evaluate(() => window.view.get(2)?.title === 'b2'), 10000, 'the update');
    const last = await page.evaluate(() => window.view.last);
    await sleep(300);                          // the cache is written 100 ms after a change
    await page.close();
    await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (3, 1, 'c')`);
    const again = await openTab(context, H.serverUrl, { format });
    await live(again);
    const log = await again.evaluate(() => window.log);
    const cache = log.find((e) => e.op === 'cache');
    assert.ok(cache, `a cache event: ${JSON.stringify(log)}`);
    assert.deepEqual(cache.ids, [1, 2], 'the cached rows, shown before the server answered');
    assert.ok(log.indexOf(cache) < log.findIndex((e) => e.op === 'live'));
    assert.equal(await ids(again), '1,2,3');
    const st = (await info(again)).stats;
    assert.equal(st.resumed, 1, `resumed after ${last} (${JSON.stringify(st)})`);
    assert.equal(st.snapshots, 0, 'no new snapshot');
    await context.close();
  });
}

test('json: writes still queued when their tab closes are replayed by the next tab', { timeout: 120000 }, async () => {
  await H.db.query('TRUNCATE rtb_items');
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a')`);
  H.writes.length = 0;
  H.control.failWrites = true;              // the application's backend is down
  const context = await H.browser.newContext();
  const page = await openTab(context, H.serverUrl, { options: { writeBackoff: { base: 200, max: 1000 } } });
  await live(page);
  await page.evaluate(() => { window.view.update(1, { title: 'queued' }, { priority: 'high' }); });
  await until(() => page.evaluate(() => window.client.writes.list()[0]?.attempts >= 2), 10000, 'failed attempts');
  assert.equal(await page.evaluate(() => window.view.rowStatus(1)), 'pending');
  await page.close();
  H.control.failWrites = false;
  const again = await openTab(context, H.serverUrl);
  await live(again);
  await until(() => again.evaluate(() => window.view.get(1)?.title === 'queued' && window.view.status === 'synced'),
    15000, 'the adopted write replayed and synced');
  assert.deepEqual(H.writes.map((w) => [w.op, w.patch.title, w.priority]), [['update', 'queued', 'high']]);
  const row = (await H.db.query('SELECT title FROM rtb_items WHERE id = 1')).rows[0];
  assert.equal(row.title, 'queued');
  assert.equal(await again.evaluate(() => window.client.writes.size), 0);
  await context.close();
});
