// The Trainer verbs of runtime/trainer.py over onnxruntime-web's training build: step, evaluate,
// getModule, setModule. A session per round: AdamW starts afresh, as OrtTrainer.set_module does.
import * as ort from "./ort/ort.training.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.logLevel = "error"; // not a warning per unused dropout constant
const query = new URLSearchParams(globalThis.location?.search ?? "");
// Threads need SharedArrayBuffer, so a cross-origin isolated page (the server sends COOP/COEP);
// `?threads=N` in the page's address overrides (benchmarks/web_step.py measures 1 and the default).
ort.env.wasm.numThreads = Number(query.get("threads")) || (globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);

// Length bucketing, as runtime/bucketing.py does natively: the columns that are padding in every row
// are dropped before a step (same loss: a padded key gets zero attention and pooling skips it).
// Real `topics` batches of 8 hold 9-20 tokens of the 32 they are padded to. `?bucketing=0` pads to the
// task's length (benchmarks/web_step.py's other arm).
const bucketing = query.get("bucketing") !== "0";

/** `batch` with its trailing all-padding columns dropped (text with an attention mask; else as is). */
export function trimPadding(batch) {
  const mask = batch.attention_mask;
  if (!mask || mask.dims?.length !== 2 || mask.dims[1] < 2) return batch;
  const [rows, cols] = mask.dims;
  let length = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = cols - 1; c >= length; c--) if (mask.data[r * cols + c] !== 0n) { length = c + 1; break; }
  }
  length = Math.max(length, 2);
  if (length >= cols) return batch;
  const out = { ...batch };
  for (const [name, t] of Object.entries(batch)) {
    if (t?.dims?.length !== 2 || t.dims[1] !== cols) continue;
    const data = new BigInt64Array(rows * length);
    for (let r = 0; r < rows; r++) data.set(t.data.subarray(r * cols, r * cols + length), r * length);
    out[name] = { data, dims: [rows, length] };
  }
  return out;
}

// onnxruntime-web has no set-learning-rate: its AdamW runs at ORT's default. Every AdamW term is
// linear in the rate, so the step is rescaled to the round's rate from the parameters before and after.
const ORT_DEFAULT_LR = 1e-3;

export class WebTrainer {
  /** files: {checkpoint, train, eval, optimizer, params (web.json), backbone} as Uint8Array; task: manifest spec */
  constructor(files, task) {
    this.files = files;
    this.task = task;
    this.layout = JSON.parse(new TextDecoder().decode(files.params));
    this.session = null;
    this.lr = ORT_DEFAULT_LR;
    this.proximal = null;
  }

  /** Start from `module` (Map name -> {data}): a fresh session, so fresh AdamW moments. */
  async setModule(module) {
    if (this.session) await this.session.release();
    this.session = await ort.TrainingSession.create({
      checkpointState: this.files.checkpoint,
      trainModel: this.files.train,
      evalModel: this.files.eval,
      optimizerModel: this.files.optimizer,
    });
    const total = this.layout.params.reduce((n, p) => n + p.length, 0);
    const buffer = new Uint8Array(total);
    let at = 0;
    for (const p of this.layout.params) {
      const src = p.from === "backbone"
        ? this.files.backbone.subarray(p.offset, p.offset + p.length)
        : new Uint8Array(module.get(p.name).data.slice().buffer);
      if (src.length !== p.length) throw new Error(`parameter ${p.name}: ${src.length} bytes, web.json says ${p.length}`);
      buffer.set(src, at);
      at += p.length;
    }
    await this.session.loadParametersBuffer(buffer, false);
    this.proximal = null;
  }

  setLearningRate(lr) { this.lr = lr; }

  /** FedProx: after each step pull the module towards `global` by lr * mu (runtime/fedprox.py). */
  setProximal(global, mu) { this.proximal = mu > 0 ? { global: this.flatten(global), mu } : null; }

  feeds(batch, names) {
    if (bucketing) batch = trimPadding(batch);
    const out = {};
    for (const name of names) {
      const b = batch[name] ?? batch.labels.map(() => 0n);
      out[name] = name === "labels" ? new ort.Tensor("int64", b, [b.length]) : new ort.Tensor("int64", b.data, b.dims);
    }
    return out;
  }

  async trainable() {
    const t = await this.session.getContiguousParameters(true);
    return Float32Array.from(t.data);
  }

  /** Forward, backward and one AdamW step at this.lr; the loss before the step. */
  async step(batch) {
    const adjust = this.lr !== ORT_DEFAULT_LR || this.proximal;
    const before = adjust ? await this.trainable() : null;
    const out = await this.session.runTrainStep(this.feeds(batch, this.session.trainingInputNames));
    await this.session.runOptimizerStep();
    await this.session.lazyResetGrad();
    if (adjust) {
      const after = await this.trainable();
      const scale = this.lr / ORT_DEFAULT_LR;
      const pull = this.proximal ? this.lr * this.proximal.mu : 0;
      for (let i = 0; i < after.length; i++) {
        let w = before[i] + scale * (after[i] - before[i]);
        if (pull) w -= pull * (w - this.proximal.global[i]);
        after[i] = w;
      }
      await this.session.loadParametersBuffer(new Uint8Array(after.buffer), true);
    }
    return Number(out[this.session.trainingOutputNames[0]].data[0]);
  }

  /** Mean loss and accuracy over batches. */
  async evaluate(batches) {
    let loss = 0, correct = 0, n = 0;
    for (const batch of batches) {
      const out = await this.session.runEvalStep(this.feeds(batch, this.session.evalInputNames));
      const names = this.session.evalOutputNames;
      const logits = out[names.find((x) => x === "logits") ?? names[1]];
      const lossName = names.find((x) => x !== "logits");
      const k = batch.labels.length;
      const classes = logits.dims[1];
      for (let i = 0; i < k; i++) {
        const row = logits.data.subarray(i * classes, (i + 1) * classes);
        let best = 0;
        for (let c = 1; c < classes; c++) if (row[c] > row[best]) best = c;
        if (BigInt(best) === batch.labels[i]) correct++;
      }
      loss += Number(out[lossName].data[0]) * k;
      n += k;
    }
    return { loss: n ? loss / n : NaN, accuracy: n ? correct / n : NaN, examples: n };
  }

  /** The module as [{name, shape, data}] in the manifest's order. */
  async getModule() {
    const flat = await this.trainable();
    const offsets = new Map();
    let at = 0;
    for (const p of this.layout.params.filter((q) => q.from === "module")) {
      offsets.set(p.name, at);
      at += p.length / 4;
    }
    return this.task.trainable.map((t) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      const start = offsets.get(t.name);
      return { name: t.name, shape: t.shape, data: flat.slice(start, start + n) };
    });
  }

  flatten(module) {
    const parts = this.layout.params.filter((p) => p.from === "module").map((p) => module.get(p.name).data);
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

export { ort };
