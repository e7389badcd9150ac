// Drives a VNC console page in Debian's Chromium (headless, through playwright-core) for
// tests/tests/vnc_browser.rs. Usage:
//   node console.mjs URL OUT.rgba [--novnc-app] [--type TEXT] [--press KEY]... [--click X,Y]
//                    [--wheel X,Y] [--home DIR]
// Waits until the console is connected and its canvas stopped changing, writes the canvas as
// "W H\n" + RGBA bytes to OUT.rgba, then types, presses and clicks in that order (and waits a
// moment so they reach the server). --novnc-app: the page is Debian's vnc.html (noVNC's own UI,
// autoconnect in the query). Prints one JSON line: {"state":..., "width":..., "height":...}.
import { chromium } from 'playwright-core';
import { writeFileSync } from 'node:fs';

const [url, out, ...rest] = process.argv.slice(2);
const opt = { type: [], press: [], click: [], wheel: [] };
for (let i = 0; i < rest.length; i++) {
  const a = rest[i];
  if (a === '--novnc-app') opt.app = true;
  else if (a === '--type') opt.type.push(rest[++i]);
  else if (a === '--press') opt.press.push(rest[++i]);
  else if (a === '--click') opt.click.push(rest[++i].split(',').map(Number));
  else if (a === '--wheel') opt.wheel.push(rest[++i].split(',').map(Number));
  else throw new Error('unknown option ' + a);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu'],
});
let result = { state: 'none' };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('console', (m) => process.stderr.write(`[page] ${m.text()}\n`));
  page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
  try {
    await page.goto(url);
  } catch (e) {
    result.state = 'load failed: ' + String(e.message).split('\n')[0];
    throw e;
  }
  const state = async () => opt.app
    ? page.evaluate(() => {
      const s = document.getElementById('noVNC_status');
      const c = document.querySelector('#noVNC_container canvas');
      if (c && c.width > 0 && document.documentElement.classList.contains('noVNC_connected')) return 'connected';
      return 'connecting:' + (s ? s.textContent : '');
    })
    : page.evaluate(() => String(window.rfbState ?? 'loading'));
  const end = Date.now() + 60000;
  let s = await state();
  while (!s.startsWith('connected') && !s.startsWith('disconnected') && !s.startsWith('securityfailure') && Date.now() < end) {
    await page.waitForTimeout(200);
    s = await state();
  }
  result.state = s;
  if (s === 'connected') {
    const canvas = opt.app ? '#noVNC_container canvas' : '#screen canvas';
    // wait until two reads a second apart agree (the first update has been drawn)
    const read = () => page.evaluate((sel) => {
      const c = document.querySelector(sel);
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
      return { w: c.width, h: c.height, px: Array.from(d.data) };
    }, canvas);
    let a = await read();
    for (let i = 0; i < 30; i++) {
      await page.waitForTimeout(1000);
      const b = await read();
      const same = a.w === b.w && a.h === b.h && a.px.length === b.px.length && a.px.every((v, k) => v === b.px[k]);
      a = b;
      if (same && a.px.some((v, k) => k % 4 !== 3 && v !== 0)) break;
    }
    writeFileSync(out, Buffer.concat([Buffer.from(`${a.w} ${a.h}\n`), Buffer.from(a.px)]));
    result.width = a.w;
    result.height = a.h;
    const box = await page.locator(canvas).boundingBox();
    await page.locator(canvas).click({ position: { x: 1, y: 1 } });
    for (const t of opt.type) await page.keyboard.type(t, { delay: 30 });
    for (const k of opt.press) await page.keyboard.press(k);
    for (const [x, y] of opt.click) await page.mouse.click(box.x + x, box.y + y);
    for (const [x, y] of opt.wheel) {
      await page.mouse.move(box.x + x, box.y + y);
      await page.mouse.wheel(0, 120);
    }
    await page.waitForTimeout(1500);
  }
} catch (e) {
  if (!result.state.startsWith('load failed')) throw e;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
