// The page: pick a task, paste or keep the examples, Join, and watch the rounds.
import { WebClient } from "./client.js";

const $ = (id) => document.getElementById(id);
// Everything shown, also for tests and screenshots: window.fedyolo.
const state = (window.fedyolo = { phase: "idle", epochs: [], rounds: [], accuracy: [], bytesSent: 0, downloaded: 0, cached: 0, error: null });

function show() {
  $("phase").textContent = state.phase;
  $("bundle").textContent = `${(state.downloaded / 1e6).toFixed(1)} MB downloaded, ${(state.cached / 1e6).toFixed(1)} MB from this phone's cache`;
  $("sent").textContent = `${(state.bytesSent / 1e3).toFixed(1)} KB sent`;
  $("epochs").innerHTML = state.epochs.map((e) => `<li>round ${e.round} · epoch ${e.epoch}: loss ${e.loss.toFixed(4)}</li>`).join("");
  $("acc").innerHTML = state.accuracy.map((a) => `<li>${a.which} module v${a.version}: ${(100 * a.accuracy).toFixed(1)}% on ${a.examples} held-out</li>`).join("");
}

/** Lines `label<TAB>text` (or `label,text`). */
function parseExamples(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line, i) => {
    const m = line.match(/^([^\t,]+)[\t,](.+)$/);
    if (!m) throw new Error(`line ${i + 1} is not "label<TAB>text": ${line.slice(0, 40)}`);
    return { label: m[1].trim(), text: m[2].trim() };
  });
}

const on = {
  status: (text) => { state.phase = text; show(); },
  download: (path, bytes) => { state.phase = `downloaded ${path} (${(bytes / 1e6).toFixed(1)} MB)`; show(); },
  bundle: (c) => { state.downloaded += c.downloaded; state.cached += c.cached; show(); },
  round: (info) => { state.round = info; state.phase = `round ${info.round} of ${info.rounds_total}: ${info.status} (${info.updates}/${info.min_clients} updates)`; show(); },
  epoch: (round, epoch, loss) => { state.epochs.push({ round, epoch, loss }); state.phase = `round ${round}: training`; show(); },
  sent: (round, outcome, bytes) => { state.rounds.push({ round, outcome }); state.bytesSent = bytes; state.phase = `round ${round}: update ${outcome}`; show(); },
  accuracy: (which, version, r) => { state.accuracy.push({ which, version, ...r }); show(); },
};

async function join() {
  $("join").disabled = true;
  try {
    if (!$("task").value) throw new Error("no task chosen: enter the enrollment key first, then pick a task");
    localStorage.setItem("fedyolo.examples", $("examples").value);
    const all = parseExamples($("examples").value);
    const demoHeldOut = JSON.parse(localStorage.getItem("fedyolo.heldOut") || "null");
    // The demo shard brings its own held-out items; else every fifth example is held out.
    const heldOut = demoHeldOut ?? all.filter((_, i) => i % 5 === 4);
    const train = demoHeldOut ? all : all.filter((_, i) => i % 5 !== 4);
    await client.register($("key").value.trim());
    localStorage.setItem("fedyolo.task", $("task").value);
    state.phase = "downloading the bundle";
    show();
    await client.run($("task").value, train, heldOut);
    state.phase = "done: every round of the task is finished";
  } catch (e) {
    state.error = String(e.message || e);
    state.phase = `error: ${state.error}`;
  }
  show();
  $("join").disabled = false;
}

async function loadTasks() {
  try {
    await client.register($("key").value.trim());
    const tasks = await client.tasks();
    $("task").innerHTML = tasks.map((t) => `<option value="${t.task_id}">${t.task_id} (${t.module_kind}, ${t.labels.length} labels)</option>`).join("");
    const saved = localStorage.getItem("fedyolo.task");
    if (saved && tasks.some((t) => t.task_id === saved)) $("task").value = saved;
    state.tasks = tasks;
    state.phase = "ready: paste examples and press Join";
  } catch (e) {
    state.phase = `error: ${e.message}`;
  }
  show();
}

async function useDemo() {
  try {
    await client.register($("key").value.trim());
    const shard = await client.demoShard($("task").value);
    const lines = (rows) => rows.map(([label, text]) => `${label}\t${text.replace(/\s+/g, " ")}`);
    $("examples").value = lines(shard.train).join("\n");
    localStorage.setItem("fedyolo.heldOut", JSON.stringify(shard.held_out.map(([label, text]) => ({ label, text }))));
    state.phase = `demo shard: ${shard.train.length} examples to train on, ${shard.held_out.length} held out`;
  } catch (e) {
    state.phase = `error: ${e.message}`;
  }
  show();
}

const client = new WebClient(location.origin, on);
$("demo").addEventListener("click", useDemo);
$("examples").addEventListener("input", () => localStorage.removeItem("fedyolo.heldOut")); // own examples
const params = new URLSearchParams(location.hash.slice(1));
$("key").value = params.get("enroll") || localStorage.getItem("fedyolo.key") || "";
$("key").addEventListener("change", () => { localStorage.setItem("fedyolo.key", $("key").value.trim()); loadTasks(); });
$("examples").value = localStorage.getItem("fedyolo.examples") || "";
$("join").addEventListener("click", join);
$("join").addEventListener("click", () => localStorage.setItem("fedyolo.joined", "1"));
if ($("key").value) {
  localStorage.setItem("fedyolo.key", $("key").value);
  // Reloaded mid-round: carry on where it stopped (a saved update is re-sent under its key).
  loadTasks().then(() => { if (localStorage.getItem("fedyolo.joined") === "1" && $("examples").value) join(); });
}
if ("serviceWorker" in navigator && window.isSecureContext) navigator.serviceWorker.register("./sw.js");
show();
