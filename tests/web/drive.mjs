// Drives phone pages in Debian's chromium with playwright-core (mobile emulation, 360 px wide).
// Job on stdin: {url, key, chromium, shots, timeout_s, pages: [{examples | demo: true, reload_before_upload?, drop_first_upload?}],
// parity?: {task, texts, labels, steps, lr}, bench?: [{task, lr, threads, query?, batches, native?: argv}]}.
// Prints {pages: [window.fedyolo of each page at the end], ...} as JSON.
import { readFileSync } from "node:fs";
import { execFileSync, spawn } from "node:child_process";
import { createRequire } from "node:module";
import os from "node:os";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../../android_demo/web/package.json", import.meta.url));
const { chromium } = require("playwright-core");
const job = JSON.parse(readFileSync(0, "utf8"));
const PHONE = { viewport: { width: 360, height: 760 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36" };
const browser = await chromium.launch({
  executablePath: job.chromium,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const state = (page) => page.evaluate(() => window.fedyolo).catch(() => null); // null while navigating
const log = (...a) => process.stderr.write(a.join(" ") + "\n");

async function phone(spec, i) {
  const context = await browser.newContext(PHONE);
  const page = await context.newPage();
  page.on("pageerror", (e) => log(`page ${i}: ${e.message}`));
  const events = { reloaded: false, dropped: false };
  if (spec.reload_before_upload) {
    // Trained, update saved, the upload not yet arrived: the reloaded page must send that same update.
    await page.route("**/updates", async (route) => {
      if (events.reloaded) return route.continue();
      events.reload_now = true; // the loop below reloads; until then no upload gets through
      await route.abort("connectionreset");
    });
  }
  if (spec.drop_first_upload) {
    // The server takes the update, the phone never hears back: it must re-send under the same key.
    await page.route("**/updates", async (route) => {
      if (events.dropped) return route.continue();
      events.dropped = true;
      await route.fetch();
      await route.abort("connectionreset");
    });
  }
  await page.goto(`${job.url}/app/#enroll=${job.key}`);
  await page.waitForFunction(() => window.fedyolo.tasks?.length > 0);
  if (spec.demo) {
    await page.click("#demo");
    await page.waitForFunction(() => window.fedyolo.phase.startsWith("demo shard"));
  } else await page.fill("#examples", spec.examples);
  await page.click("#join");
  const deadline = Date.now() + job.timeout_s * 1000;
  let shot = false;
  for (;; await new Promise((r) => setTimeout(r, 200))) {
    const s = await state(page);
    if (s === null) continue;
    if (events.reload_now && !events.reloaded) {
      events.reloaded = true;
      events.before_reload = s;
      await page.reload();
      continue;
    }
    if (!shot && s.epochs.length > 0) {
      await page.screenshot({ path: `${job.shots}/page${i}_training.png`, fullPage: true });
      shot = true;
    }
    if (s.phase.startsWith("done") || s.error) break;
    if (Date.now() > deadline) { events.timeout = true; break; }
  }
  await page.screenshot({ path: `${job.shots}/page${i}_end.png`, fullPage: true });
  const end = await state(page);
  await context.close();
  return { ...end, events };
}

/** Losses of `steps` steps on one batch from the task's initial module, in the page's own trainer. */
async function parity(spec) {
  const page = await (await browser.newContext(PHONE)).newPage();
  await page.goto(`${job.url}/app/`);
  return page.evaluate(async ({ spec, key }) => {
    const { WebClient, batches } = await import("./client.js");
    const noop = () => {};
    const client = new WebClient(location.origin, { status: noop, download: noop, bundle: noop });
    await client.register(key);
    const { task, trainer, tokenizer } = await client.syncBundle(spec.task);
    await trainer.setModule(await client.module(task, 0));
    trainer.setLearningRate(spec.lr);
    const L = task.input.max_length;
    const [batch] = batches(tokenizer.encode(spec.texts, L), spec.labels.map(BigInt), spec.texts.length, [...spec.texts.keys()], L);
    const losses = [];
    for (let i = 0; i < spec.steps; i++) losses.push(await trainer.step(batch));
    return losses;
  }, { spec, key: job.key });
}

/** Step times of the page's trainer on pre-encoded batches (benchmarks/web_step.py), and its memory.
 * spec.native: the command of a native trainer that steps on the same batch when sent its index, one
 * JSON line back per step: each native step runs just before the page's, so a busy host slows both. */
async function bench(spec) {
  const page = await (await browser.newContext(PHONE)).newPage();
  await page.goto(`${job.url}/app/?threads=${spec.threads}${spec.query ?? ""}`);
  const setup = await page.evaluate(async ({ spec, key }) => {
    const { WebClient } = await import("./client.js");
    const noop = () => {};
    const client = new WebClient(location.origin, { status: noop, download: noop, bundle: noop });
    await client.register(key);
    let t = performance.now();
    const { task, trainer } = await client.syncBundle(spec.task);
    const download_s = (performance.now() - t) / 1000;
    t = performance.now();
    await trainer.setModule(await client.module(task, 0));
    const load_s = (performance.now() - t) / 1000;
    trainer.setLearningRate(spec.lr);
    const tensor = (rows) => ({ data: BigInt64Array.from(rows.flat(), BigInt), dims: [rows.length, rows[0].length] });
    window.bench = { trainer, batches: spec.batches.map((b) => ({ input_ids: tensor(b.input_ids), attention_mask: tensor(b.attention_mask), labels: BigInt64Array.from(b.labels, BigInt) })) };
    return { download_s, load_s, isolated: globalThis.crossOriginIsolated };
  }, { spec, key: job.key });
  niceChromium();
  const native = spec.native ? nativeTrainer(spec.native) : null;
  const ready = native ? await native.next() : null;
  const times = [], losses = [], native_times = [], native_losses = [];
  for (let i = 0; i < spec.batches.length; i++) {
    if (native) {
      const r = await native.step(i);
      native_times.push(r.ms);
      native_losses.push(r.loss);
    }
    const r = await page.evaluate(async (i) => {
      const t = performance.now();
      const loss = await window.bench.trainer.step(window.bench.batches[i]);
      return { ms: performance.now() - t, loss };
    }, i);
    times.push(r.ms);
    losses.push(r.loss);
  }
  const memory = await page.evaluate(async () => {
    if (globalThis.crossOriginIsolated && performance.measureUserAgentSpecificMemory) {
      return { kind: "measureUserAgentSpecificMemory", bytes: (await performance.measureUserAgentSpecificMemory()).bytes };
    }
    return performance.memory ? { kind: "performance.memory.usedJSHeapSize", bytes: performance.memory.usedJSHeapSize } : null;
  });
  const end = native ? await native.close() : null;
  const paired = native ? { native: { ...ready, ...end, times_ms: native_times, losses: native_losses } } : {};
  return { times_ms: times, losses, memory, threads: spec.threads, query: spec.query ?? "", ...setup, ...paired };
}

/** Chromium sets its renderers' priority itself (nice 0 under a nice-19 driver, as root), so on a busy
 * host the page would get a larger CPU share than the native trainer: every descendant to the driver's nice. */
function niceChromium() {
  const children = new Map();
  for (const line of execFileSync("ps", ["-eo", "pid=,ppid="], { encoding: "utf8" }).trim().split("\n")) {
    const [pid, ppid] = line.trim().split(/\s+/).map(Number);
    children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  }
  const tree = [];
  for (const stack = [process.pid]; stack.length;) for (const c of children.get(stack.pop()) ?? []) { tree.push(c); stack.push(c); }
  const nice = os.getPriority();
  for (const pid of tree) try { os.setPriority(pid, nice); } catch { /* gone already */ }
}

/** A native trainer process (benchmarks/web_step.py --serve): step(i) -> {ms, loss}; close() -> its last line. */
function nativeTrainer(argv) {
  const child = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const { value, done } = await lines.next();
    if (done) throw new Error(`native trainer ${argv.join(" ")} exited`);
    return JSON.parse(value);
  };
  return {
    next,
    step: (i) => { child.stdin.write(`${i}\n`); return next(); },
    close: () => { child.stdin.end(); return next(); },
  };
}

try {
  const pages = await Promise.all((job.pages ?? []).map((spec, i) => phone(spec, i)));
  const losses = job.parity ? await parity(job.parity) : null;
  const benches = [];
  for (const spec of job.bench ?? []) benches.push(await bench(spec));
  process.stdout.write(JSON.stringify({ pages, parity: losses, bench: benches }));
} finally {
  await browser.close();
}
