// scratch: the browser flows with rows inserted after the first view is live
import { setup, fixtures, openTab, ids, info, until, sleep } from './_harness.mjs';
const H = await setup();
await fixtures(H.db);
const live = (p) => until(() => p.evaluate(() => window.view.live));
const step = (s) => console.log('--', s);
try {
  // three tabs
  let context = await H.browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) { tabs.push(await openTab(context, H.serverUrl, { format: 'msgpack' })); await live(tabs[i]); }
  console.log((await Promise.all(tabs.map(info))).map((i) => [i.isLeader, i.status, i.serverSubscriptions]));
  console.log('sessions', await H.metric('rtsub_ws_sessions_open'));
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (1, 1, 'a'), (2, 1, 'b')`);
  for (const p of tabs) await until(async () => (await ids(p)) === '1,2');
  step('failover');
  const leader = tabs[0];
  const t0 = Date.now();
  await leader.close();
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (3, 1, 'c')`);
  const rest = tabs.slice(1);
  const next = await until(async () => { for (const p of rest) { const i = await info(p); if (i.isLeader && i.status === 'open') return p; } return null; });
  console.log('failover ms', Date.now() - t0, (await info(next)).stats);
  for (const p of rest) await until(async () => (await ids(p)) === '1,2,3', 5000, 'row 3');
  step('offline');
  await context.setOffline(true);
  for (const p of rest) await until(() => p.evaluate(() => window.client.status === 'offline' && !window.view.live), 10000, 'offline');
  await H.db.query(`UPDATE rtb_items SET title = 'server' WHERE id = 1`);
  const follower = rest.find((p) => p !== next);
  console.log(await follower.evaluate(() => {
    window.writes = [window.view.update(2, { title: 'offline-normal' }),
      window.view.insert({ id: 4, org: 1, title: 'offline-critical' }, { priority: 'critical' })];
    return [window.view.rows(), window.view.rowStatus(2), window.view.status];
  }));
  await sleep(300);
  await context.setOffline(false);
  for (const p of rest) await until(() => p.evaluate(() => window.view.live && window.view.get(1)?.title === 'server'), 15000, 'online');
  console.log(await follower.evaluate(async () => (await Promise.all(window.writes)).map((r) => r.status)), H.writes.map((w) => w.op));
  for (const p of rest) await until(() => p.evaluate(() => window.view.get(4)?.title === 'offline-critical' && window.view.get(2)?.title === 'offline-normal'), 10000, 'writes');
  await until(() => follower.evaluate(() => window.view.status === 'synced'), 10000, 'synced');
  console.log((await info(next)).stats);
  step('reload');
  await sleep(300);
  await next.close(); await follower.close();
  await H.db.query(`INSERT INTO rtb_items (id, org, title) VALUES (5, 1, 'e')`);
  const again = await openTab(context, H.serverUrl, { format: 'msgpack' });
  await live(again);
  console.log(await again.evaluate(() => window.log.slice(0, 4)), await ids(again), (await info(again)).stats);
} catch (e) { console.log('FAILED', e); }
await H.close();
