// Real-browser test of the web console at GET / (src/console.html), driven by
// tests/console.rs. Usage:
//   node console.test.mjs <base-url> <screenshot-path> <pidA> <handshake-dir>
// <pidA> is the server the page first connects to (the only one on the port
// then). After step 5 this script writes <handshake-dir>/ready-for-b and waits
// for <handshake-dir>/go, whose content is the pid of server B, which the Rust
// test has started on the same port (SO_REUSEPORT). Then it SIGTERMs A and
// checks that the page rides the drain over to B with its session intact.
// Exit 0 = pass; otherwise a message saying which step failed.
import { chromium } from 'playwright-core';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [base, shot, pidArg, dir] = process.argv.slice(2);
// The server API key, for the page (through its URL fragment) and for the
// test's own broadcasts.
const apiKey = process.env.API_KEY || '';
if (!base || !shot || !pidArg || !dir) {
  console.error('usage: node console.test.mjs <base-url> <screenshot-path> <pidA> <handshake-dir>');
  process.exit(2);
}
const pidA = Number(pidArg);
const STEP_MS = 10_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.error(`console test: no browser at ${CHROMIUM}; install it with: apt-get install -y chromium`);
  process.exit(3);
}

let step = 'launch';
const say = (msg) => console.log(`[console.test] ${msg}`);
const started = Date.now();

async function until(what, f, limit = STEP_MS) {
  const deadline = Date.now() + limit;
  let last;
  for (;;) {
    last = await f();
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${limit} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let page;
try {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 } });
  page = await ctx.newPage();
  page.on('pageerror', (e) => say(`page error: ${e.message}`));
  const text = (sel) => page.locator(sel).textContent();
  const is = (sel, want) => async () => { const t = (await text(sel)).trim(); return t === want ? true : t; };
  const send = async (msg) => {
    await page.fill('#message', msg);
    await page.press('#message', 'Enter');
  };

  step = '1: open and connect';
  say(step);
  const res = await page.goto(base + '/#key=' + encodeURIComponent(apiKey));
  if (!res || res.status() !== 200) throw new Error(`GET / answered ${res && res.status()}`);
  await page.click('#connect');
  await until('#state = connected', is('#state', 'connected'));
  const session = (await text('#session')).trim();
  if (!session) throw new Error('#session is empty after connecting');
  say(`   session ${session}, resumed ${(await text('#resumed')).trim()}`);

  step = '1b: permessage-deflate, negotiated by the browser itself';
  say(step);
  // A socket of the page's own: the browser offers permessage-deflate, the
  // server (run with it on) takes the offer; a long message goes out
  // compressed by the browser and is counted, and a long broadcast comes
  // back compressed by the server and arrives whole.
  const long = 'deflate me '.repeat(200);
  const opened = page.evaluate((url) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const got = [];
    ws.onmessage = (e) => {
      const v = JSON.parse(e.data);
      got.push(v);
      if (got.length === 1) ws.send('deflate me '.repeat(200));
      const counted = got.some((g) => g.count === 1 && g.session_id === undefined);
      if (counted && got.some((g) => g.broadcast !== undefined)) {
        resolve({ ext: ws.extensions, got });
        ws.close();
      }
    };
    ws.onerror = () => reject(new Error('socket error'));
    setTimeout(() => reject(new Error('no count and broadcast in 10 s; got ' + JSON.stringify(got))), 10_000);
  }), base.replace(/^http/, 'ws') + '/ws/chat/');
  let done = false;
  opened.finally(() => { done = true; });
  // Until the socket has one (it may open after the first).
  while (!done) {
    const r = await fetch(base + '/api/broadcast', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
      body: JSON.stringify({ message: long }),
    });
    if (r.status !== 202) throw new Error(`POST /api/broadcast answered ${r.status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const deflated = await opened;
  if (!deflated.ext.startsWith('permessage-deflate')) throw new Error(`extensions: ${JSON.stringify(deflated.ext)}`);
  const bc = deflated.got.find((v) => v.broadcast !== undefined);
  if (bc.broadcast !== long) throw new Error(`the long broadcast arrived changed: ${bc.broadcast.length} chars`);
  say(`   extensions "${deflated.ext}"; the long message counted, the long broadcast whole`);

  step = '2: send 3 messages';
  say(step);
  for (const m of ['one', 'two', 'three']) await send(m);
  await until('#count = 3', is('#count', '3'));

  step = '2b: the live charts draw and move';
  say(step);
  const chart = (name) => page.locator('#chart-' + name).evaluate((svg) => ({
    points: Number(svg.dataset.points || 0),
    last: Number(svg.dataset.last || 0),
    peak: Number(svg.dataset.peak || 0),
    lines: svg.querySelectorAll('polyline.total').length,
    down: svg.querySelectorAll('rect.down').length,
  }));
  await until('the sockets chart to show this socket', async () => {
    const c = await chart('sockets');
    return (c.lines === 1 && c.points >= 2 && c.last >= 1) || c;
  });
  await until('the messages chart to show the 3 messages as a rate', async () => {
    const c = await chart('messages');
    return (c.lines === 1 && c.peak > 0) || c;
  });
  const first = (await chart('messages')).points;
  await until('the charts to move on', async () => {
    const c = await chart('messages');
    return c.points > first || c;
  }, 5_000);
  if ((await chart('sockets')).down !== 0) throw new Error('Redis marked down while it was up');

  step = '3: reload and resume, in room lobby';
  say(step);
  await page.reload();
  await page.fill('#room', 'lobby');
  await page.click('#connect');
  await until('#state = connected', is('#state', 'connected'));
  await until(`#session = ${session}`, is('#session', session));
  await until('#resumed = yes', is('#resumed', 'yes'));
  await until('#count = 3', is('#count', '3'));
  await send('four');
  await until('#count = 4', is('#count', '4'));

  step = '4: broadcast';
  say(step);
  const b = await fetch(base + '/api/broadcast', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
    body: JSON.stringify({ message: 'hello from the test' }),
  });
  if (b.status !== 202) throw new Error(`POST /api/broadcast answered ${b.status}: ${await b.text()}`);
  await until('#log to show the broadcast', async () =>
    (await text('#log')).includes('hello from the test') || 'not yet');
  // Another room's broadcast first, then lobby's: one subscription delivers
  // in publish order, so once lobby's shows, the other would have too.
  for (const [room, message] of [['elsewhere', 'not for this page'], ['lobby', 'for the lobby']]) {
    const r = await fetch(base + '/api/broadcast', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
      body: JSON.stringify({ message, room }),
    });
    if (r.status !== 202) throw new Error(`room broadcast answered ${r.status}: ${await r.text()}`);
  }
  await until('#log to show the lobby broadcast', async () =>
    (await text('#log')).includes('for the lobby') || 'not yet');
  await until('the broadcasts chart to show the delivered frames', async () => {
    const c = await chart('broadcasts');
    return c.peak > 0 || c;
  });
  if ((await text('#log')).includes('not for this page')) {
    throw new Error('a broadcast to another room reached the page');
  }

  step = '5: away and back: the page recovers what it missed';
  say(step);
  await page.click('#disconnect');
  await until('#state = disconnected', is('#state', 'disconnected'));
  for (const [room, message] of [[null, 'missed one'], ['lobby', 'missed two'], ['elsewhere', 'not mine'], [null, 'missed three']]) {
    const r = await fetch(base + '/api/broadcast', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
      body: JSON.stringify(room ? { message, room } : { message }),
    });
    if (r.status !== 202) throw new Error(`broadcast while away answered ${r.status}: ${await r.text()}`);
  }
  await page.click('#connect');
  await until('#state = connected', is('#state', 'connected'));
  await until('#recovered = recovered 3 messages', is('#recovered', 'recovered 3 messages'));
  const log3 = await text('#log');
  for (const m of ['missed one', 'missed two', 'missed three']) {
    if (!log3.includes('recovered broadcast') || !log3.includes(m)) throw new Error(`the log lacks the recovered "${m}"`);
  }
  if (log3.includes('not mine')) throw new Error('another room\'s broadcast was recovered');

  step = '6: drain server A and ride over to server B';
  say(step);
  writeFileSync(join(dir, 'ready-for-b'), 'ready-for-b\n');
  const go = join(dir, 'go');
  await until('the Rust test to start server B', () => existsSync(go) || 'no go file', 20_000);
  const pidB = readFileSync(go, 'utf8').trim();
  say(`   SIGTERM to server A (pid ${pidA}); server B is pid ${pidB}`);
  process.kill(pidA, 'SIGTERM');
  await until('the drain notice', async () =>
    (await text('#log')).includes('reason shutdown') || 'no shutdown goodbye in the log');
  say(`   page said: ${(await text('#status-line')).trim()}`);
  await until('#state = connected again', is('#state', 'connected'));
  await until(`#session = ${session}`, is('#session', session));
  await until('#resumed = yes', is('#resumed', 'yes'));
  await until('#count = 4', is('#count', '4'));
  await until(`#status-pid = ${pidB}`, is('#status-pid', pidB));
  await send('five');
  await until('#count = 5', is('#count', '5'));

  step = '7: screenshot';
  say(step);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  if (wide) throw new Error('the page scrolls horizontally at 390 px');
  await page.screenshot({ path: shot, fullPage: true });
  say(`   saved ${shot}`);
  say(`PASS in ${Date.now() - started} ms`);
} catch (e) {
  console.error(`[console.test] FAIL at step ${step}: ${e.message}`);
  if (page) {
    try {
      await page.screenshot({ path: shot.replace(/\.png$/, '') + '-failure.png', fullPage: true });
      console.error(`[console.test] page log (newest first):\n${(await page.locator('#log').innerText()).split('\n').slice(0, 30).join('\n')}`);
    } catch { /* best effort */ }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
