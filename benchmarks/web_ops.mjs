// One-node graphs (benchmarks/web_ops.py) timed in onnxruntime-web's training wasm, the page's build, in
// Debian's chromium (the page's engine): one thread, graph optimisations off, no prepacking.
// Job on stdin: {dir, chromium, repeats, jobs: [{node, model, feeds: [{name, dtype, dims, file}]}]}.
// Prints {ms: {node: median ms}, overhead_ms} as JSON; a node that fails alone is reported on stderr.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const web = fileURLToPath(new URL("../android_demo/web/", import.meta.url));
const { chromium } = createRequire(join(web, "package.json"))("playwright-core");
const dist = join(web, "node_modules", "onnxruntime-web", "dist");
const job = JSON.parse(readFileSync(0, "utf8"));

// The graphs and onnxruntime-web's dist over HTTP on loopback: a module import needs an origin.
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = path === "/" ? "index.html" : path.startsWith("/ort/") ? join(dist, normalize(path.slice(5))) : join(job.dir, normalize(path.slice(1)));
  try {
    const type = file.endsWith(".mjs") ? "text/javascript" : file.endsWith(".wasm") ? "application/wasm" : path === "/" ? "text/html" : "application/octet-stream";
    const body = path === "/" ? "" : readFileSync(file);
    // Cross-origin isolated, so performance.now() ticks in microseconds, not 100 us steps.
    res.writeHead(200, { "content-type": type, "cross-origin-opener-policy": "same-origin",
      "cross-origin-embedder-policy": "require-corp" }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${server.address().port}`;
// --no-liftoff: every kernel compiled by TurboFan up front, as the page's hot kernels are once tiered
// up; a one-node graph run a few times would otherwise time V8's baseline code.
const browser = await chromium.launch({ executablePath: job.chromium, args: ["--no-sandbox", "--disable-gpu", "--js-flags=--no-liftoff"] });
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`${m.text()}\n`));
  await page.goto(`${url}/`);
  const out = await page.evaluate(async (job) => {
    const ort = await import("/ort/ort.training.wasm.min.mjs");
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = 1;
    ort.env.logLevel = "error";
    const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, bool: Uint8Array };
    const median = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
    // As native (web_ops.py): no graph optimisation, no prepacking (the page's weights are inputs).
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "disabled", logSeverityLevel: 3,
      extra: { session: { disable_prepacking: "1" } } };
    const bytes = async (name) => new Uint8Array(await (await fetch(`/${name}`)).arrayBuffer());
    const ms = {};
    for (const j of job.jobs) {
      let session = null;
      try {
        session = await ort.InferenceSession.create(await bytes(j.model), options);
        const feeds = {};
        for (const f of j.feeds) {
          const b = await bytes(f.file);
          feeds[f.name] = new ort.Tensor(f.dtype, new ARRAYS[f.dtype](b.buffer), f.dims);
        }
        await session.run(feeds);
        const runs = [];
        for (let i = 0; i < job.repeats; i++) {
          const t = performance.now();
          await session.run(feeds);
          runs.push(performance.now() - t);
        }
        ms[j.node] = median(runs);
      } catch (e) {
        console.log(`wasm: ${j.node} (${j.op}) skipped: ${String(e.message ?? e).split("\n")[0].slice(0, 120)}`);
      } finally {
        if (session) await session.release();
      }
    }
    return { ms, overhead_ms: ms.identity ?? null, userAgent: navigator.userAgent };
  }, job);
  process.stdout.write(JSON.stringify(out));
} finally {
  await browser.close();
  server.close();
}
