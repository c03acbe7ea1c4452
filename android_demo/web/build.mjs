// Build the page into the Python package (fedserver/web/), so `pip install fedyolo[server]` serves it
// with no npm: the sources as they are (plain ES modules, no bundler) and onnxruntime-web's training
// build (the one wasm variant it ships, SIMD + threads). Byte-for-byte copies: a rebuild is identical.
// `node build.mjs --check` fails when the committed output differs from a fresh build.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "fedserver", "web");
const ortDist = join(here, "node_modules", "onnxruntime-web", "dist");
const ORT_FILES = ["ort.training.wasm.min.mjs", "ort-training-wasm-simd-threaded.mjs", "ort-training-wasm-simd-threaded.wasm"];

const wanted = new Map();
for (const name of readdirSync(join(here, "src")).sort()) wanted.set(name, join(here, "src", name));
for (const name of ORT_FILES) wanted.set(`ort/${name}`, join(ortDist, name));

const digest = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");
const listing = [...wanted].map(([name, src]) => `${digest(src)}  ${name}`).join("\n") + "\n";

if (process.argv.includes("--check")) {
  const stale = [...wanted].filter(([name, src]) => {
    try { return digest(join(out, name)) !== digest(src); } catch { return true; }
  });
  if (stale.length) {
    console.error(`fedserver/web is stale (${stale.map(([n]) => n).join(", ")}); run: make web`);
    process.exit(1);
  }
  console.log(`fedserver/web matches a fresh build (${wanted.size} files)`);
} else {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, "ort"), { recursive: true });
  for (const [name, src] of wanted) copyFileSync(src, join(out, name));
  writeFileSync(join(out, "SHA256SUMS"), listing);
  console.log(`built ${wanted.size} files into ${out}`);
}
