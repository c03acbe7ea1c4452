// The federated client of runtime/client.py, in the page: register once, fetch the bundle once (sha256
// checked, kept in IndexedDB), then round after round: global module -> local epochs -> upload, with
// the update and its idempotency key saved before the first try, so a reload re-sends the same update.
import { Connection, FederationError, errorOf } from "./api.js";
import { decodeSafetensors, encodeSafetensors } from "./safetensors.js";
import { sha256Hex } from "./sha256.js";
import { dropPending, getFile, getPending, putFile, putPending } from "./store.js";
import { WordPieceTokenizer } from "./tokenizer.js";
import { WebTrainer } from "./trainer.js";

const KEEP_GOING = new Set(["stale_round", "already_submitted", "task_finished", "update_quarantined"]);
const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));

/** Seeded shuffle (mulberry32): each epoch draws a new order, as iter_batches does. */
function shuffled(n, seed) {
  let a = seed >>> 0;
  const rand = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const order = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Examples [{text, label}] -> batches of graph inputs, in `order`. */
export function batches(encoded, labels, batchSize, order, maxLength) {
  const out = [];
  for (let s = 0; s < order.length; s += batchSize) {
    const rows = order.slice(s, s + batchSize);
    const pick = (arr) => {
      const data = new BigInt64Array(rows.length * maxLength);
      rows.forEach((r, i) => data.set(arr.subarray(r * maxLength, (r + 1) * maxLength), i * maxLength));
      return { data, dims: [rows.length, maxLength] };
    };
    out.push({ input_ids: pick(encoded.input_ids), attention_mask: pick(encoded.attention_mask), labels: BigInt64Array.from(rows, (r) => labels[r]) });
  }
  return out;
}

export class WebClient {
  constructor(base, on) {
    this.on = on; // {status(text), download(path, got, total), epoch(round, epoch, loss), sent(bytes), accuracy(...)}
    this.conn = new Connection(base, { onRetry: (m) => on.status(m) });
    this.conn.token = localStorage.getItem("fedyolo.token");
    this.bytesSent = Number(localStorage.getItem("fedyolo.bytesSent") || 0);
  }

  async register(enrollKey) {
    if (this.conn.token) {
      const check = await this.conn.request("GET", "/v1/tasks");
      if (check.status !== 401) return;
      // A server that no longer knows this phone (its state was reset): register afresh, forget its rounds.
      this.conn.token = null;
      for (const k of Object.keys(localStorage)) if (k.startsWith("fedyolo.submitted.")) localStorage.removeItem(k);
    }
    const name = `web-${Math.random().toString(36).slice(2, 10)}`;
    const body = await this.conn.json("POST", "/v1/clients", {
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ enroll_key: enrollKey, name }),
    });
    this.conn.token = body.token;
    localStorage.setItem("fedyolo.token", body.token);
  }

  tasks() { return this.conn.json("GET", "/v1/tasks").then((b) => b.tasks); }

  /** The server's demo shard for this phone: {train, held_out} as [label, text] rows. */
  demoShard(taskId) { return this.conn.json("GET", `/v1/web/demo/${taskId}`); }

  /** A bundle file, from IndexedDB when its sha256 is there, else downloaded and checked. */
  async file(entry, fromServer) {
    const kept = await getFile(entry.sha256);
    if (kept) { fromServer.cached += entry.bytes; return kept; }
    const bytes = await this.conn.bytes(`/v1/bundle/files/${entry.path}`);
    const sha = await sha256Hex(bytes);
    if (sha !== entry.sha256) throw new FederationError("bad_download", `${entry.path} failed its sha256 check`);
    await putFile(entry.sha256, bytes);
    fromServer.downloaded += bytes.length;
    this.on.download(entry.path, bytes.length);
    return bytes;
  }

  /** The manifest, the tokenizer and the task's browser form over the backbone. */
  async syncBundle(taskId) {
    const listing = new Map((await this.conn.json("GET", "/v1/bundle")).files.map((f) => [f.path, f]));
    const need = (path) => {
      const f = listing.get(path);
      if (!f) throw new FederationError("old_bundle", `the server's bundle has no ${path}; re-export it with this fedyolo`);
      return f;
    };
    const counts = { downloaded: 0, cached: 0 };
    const get = (path) => this.file(need(path), counts);
    const manifest = JSON.parse(new TextDecoder().decode(await get("manifest.json")));
    const task = manifest.tasks[taskId];
    if ((manifest.backbone.dtype || "float32") !== "float32") {
      throw new FederationError(
        "backbone_dtype",
        `this bundle stores its backbone as ${manifest.backbone.dtype}, which the page cannot train; serve a bundle exported without --backbone-dtype to phones`,
      );
    }
    const dir = `tasks/${taskId}/`;
    const files = {
      checkpoint: await get(dir + "web_checkpoint"),
      train: await get(dir + "web_training_model.onnx"),
      eval: await get(dir + "web_eval_model.onnx"),
      optimizer: await get(dir + "optimizer_model.onnx"),
      params: await get(dir + "web.json"),
      backbone: await get("backbone/backbone.bin"),
    };
    const tokenizer = new WordPieceTokenizer(JSON.parse(new TextDecoder().decode(await get("tokenizer.json"))));
    this.on.bundle(counts);
    return { manifest, task, trainer: new WebTrainer(files, task), tokenizer };
  }

  async module(task, version) {
    const bytes = await this.conn.bytes(`/v1/tasks/${task.task_id}/modules/${version}`);
    return decodeSafetensors(bytes);
  }

  lastSubmitted(taskId) { return Number(localStorage.getItem(`fedyolo.submitted.${taskId}`) || 0); }

  /** Take part in rounds of `taskId` until it is finished. examples/heldOut: [{text, label}]. */
  async run(taskId, examples, heldOut) {
    const { task, trainer, tokenizer } = await this.syncBundle(taskId);
    if (task.input.kind !== "text") throw new Error(`task ${taskId} takes images; this page trains text tasks only`);
    const labelId = (e) => {
      const i = task.labels.indexOf(e.label);
      if (i < 0) throw new Error(`label ${JSON.stringify(e.label)} is not one of the task's: ${task.labels.join(", ")}`);
      return BigInt(i);
    };
    const L = task.input.max_length;
    const train = { enc: tokenizer.encode(examples.map((e) => e.text), L), labels: examples.map(labelId) };
    const test = { enc: tokenizer.encode(heldOut.map((e) => e.text), L), labels: heldOut.map(labelId) };
    let seed = this.lastSubmitted(taskId) + 1;
    for (;;) {
      const last = this.lastSubmitted(taskId);
      const info = await this.conn.json("GET", `/v1/tasks/${taskId}/round?newer_than=${last}&wait_s=20`);
      this.on.round(info);
      if (info.status === "finished") break;
      if (info.status !== "open" || last >= info.round) continue;
      let pending = await getPending(taskId);
      if (pending && pending.round !== info.round) { await dropPending(taskId); pending = null; }
      if (!pending) pending = await this.train(task, trainer, info, train, test, seed++);
      await this.upload(task, pending);
    }
    const version = (await this.conn.json("GET", `/v1/tasks/${taskId}/round`)).module_version;
    await trainer.setModule(await this.module(task, version));
    const final = await trainer.evaluate(batches(test.enc, test.labels, 32, [...test.labels.keys()], L));
    this.on.accuracy("final", version, final);
    return final;
  }

  async train(task, trainer, info, train, test, seed) {
    const L = task.input.max_length;
    const global = await this.module(task, info.module_version);
    await trainer.setModule(global);
    trainer.setLearningRate(info.lr);
    trainer.setProximal(global, info.proximal_mu || 0);
    const before = await trainer.evaluate(batches(test.enc, test.labels, info.batch_size, [...test.labels.keys()], L));
    this.on.accuracy("global", info.module_version, before);
    const losses = [];
    for (let epoch = 0; epoch < info.local_epochs; epoch++) {
      const order = shuffled(train.labels.length, seed * 1000 + epoch);
      let sum = 0, steps = 0;
      for (const batch of batches(train.enc, train.labels, info.batch_size, order, L)) {
        const loss = await trainer.step(batch);
        if (!Number.isFinite(loss)) throw new Error(`training loss became ${loss}; the server's lr ${info.lr} is too high`);
        sum += loss; steps++;
      }
      losses.push(sum / steps);
      this.on.epoch(info.round, epoch + 1, sum / steps);
    }
    const body = encodeSafetensors(await trainer.getModule(), task.wire_dtype || "float32");
    const all = { accuracy: before.accuracy, loss: before.loss, train_loss: losses.reduce((a, b) => a + b) / losses.length };
    const metrics = Object.fromEntries(Object.entries(all).filter(([, v]) => Number.isFinite(v))); // as train_round
    const pending = { round: info.round, key: crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`.replace(".", ""), examples: train.labels.length, metrics, body, losses };
    await putPending(task.task_id, pending); // from here on a reload re-sends this exact update
    return pending;
  }

  async upload(task, pending) {
    const response = await this.conn.request("POST", `/v1/tasks/${task.task_id}/rounds/${pending.round}/updates`, {
      body: pending.body,
      headers: {
        "content-type": "application/octet-stream",
        "idempotency-key": pending.key,
        "fedyolo-examples": String(pending.examples),
        "fedyolo-metrics": JSON.stringify(pending.metrics),
      },
    });
    let outcome = "accepted";
    if (response.status !== 201) {
      const e = await errorOf(response);
      if (!KEEP_GOING.has(e.code)) {
        if (e.status && e.status < 500) await dropPending(task.task_id);
        throw e;
      }
      outcome = { already_submitted: "accepted", update_quarantined: "set_aside" }[e.code] ?? "stale";
    } else {
      this.bytesSent += pending.body.length;
      localStorage.setItem("fedyolo.bytesSent", String(this.bytesSent));
    }
    if (outcome !== "stale") localStorage.setItem(`fedyolo.submitted.${task.task_id}`, String(pending.round));
    await dropPending(task.task_id);
    this.on.sent(pending.round, outcome, this.bytesSent);
  }
}

export { sleep };
