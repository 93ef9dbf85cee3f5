// clients/js/demo/check.mjs — `test/demo --check`: opens the demo page in
// headless Chromium, waits for the live rows, changes the table with pg and
// waits for the page to show it, clicks a write button and waits for the
// server's row. Exits 0 when all of that happened.
//   env: DEMO_PAGE (http://localhost:PORT/), PGDATABASE=demo, PG*
import { chromium } from 'playwright-core';
import pg from 'pg';

const page_url = process.env.DEMO_PAGE;
const db = new pg.Client({ database: process.env.PGDATABASE ?? 'demo' });
await db.connect();
const browser = await chromium.launch({ executablePath: process.env.RTSUB_CHROMIUM ?? '/usr/bin/chromium' });
const fail = async (msg) => { console.error(`demo check: ${msg}`); await browser.close(); await db.end(); process.exit(1); };
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(page_url);
  const names = () => page.$$eval('#rows tr td:nth-child(2)', (tds) => tds.map((t) => t.textContent));
  await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 1 && window.view?.live, null, { timeout: 20000 });
  console.log(`demo check: live rows on the page: ${(await names()).join(', ')}`);
  await db.query("INSERT INTO items (org_id, name, price) VALUES (1, 'from-check', 3.00)");
  await page.waitForFunction(() => [...document.querySelectorAll('#rows tr td:nth-child(2)')].some((t) => t.textContent === 'from-check'), null, { timeout: 10000 });
  console.log('demo check: a row inserted with SQL appeared on the page');
  await page.click('#rows tr:last-child button[data-act=up]');
  const deadline = Date.now() + 10000;
  for (;;) {
    const { rows } = await db.query("SELECT price::text FROM items WHERE name = 'from-check'");
    if (rows[0]?.price === '3.30') break;
    if (Date.now() > deadline) await fail(`the page's write did not reach the table: ${JSON.stringify(rows)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await page.waitForFunction(() => window.view.status === 'synced'
    && Number(window.view.rows().find((r) => r.name === 'from-check')?.price) === 3.3, null, { timeout: 10000 });
  console.log('demo check: a write from the page reached the table and came back: synced');
} catch (e) {
  await fail(e.message);
}
await browser.close();
await db.end();
console.log('demo check: ok');
