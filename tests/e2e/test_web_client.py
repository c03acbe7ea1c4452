"""Phones in the round: the page served by the real server, trained in Debian's chromium (playwright-core,
360-px mobile emulation) beside a Python client; its tokenizer and first steps against the Python runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime.bucketing import trim_padding
from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.client import FederationClient, RoundResult
from fedyolo.runtime.data import Example, TextEncoder
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import decode_module
from fedyolo.tasks import load_task
from fedyolo.tasks.web_demo import write_demo_shards

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "android_demo" / "web"
DRIVER = ROOT / "tests" / "web" / "drive.mjs"
KEY = "web-client-enrollment-key-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
LOSS_TOLERANCE = 1e-5  # relative; measured: equal to float32 precision on tiny-bert

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or NODE is None or not (WEB / "node_modules" / "playwright-core").is_dir(),
    reason="needs node, Debian's chromium and `make web` (npm ci in android_demo/web); .ci/run installs them",
)


def node(script: Path, job: dict[str, Any], timeout_s: float) -> Any:
    done = subprocess.run(
        [str(NODE), str(script)], input=json.dumps(job), capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def shard(examples: list[Example], client: int, clients: int, n: int) -> list[Example]:
    """`n` examples of the client's own, spread over the labels (the built-in list is grouped by label)."""
    order = np.random.default_rng(client).permutation(len(examples))
    return [examples[i] for i in order[client::clients][:n]]


def as_lines(examples: list[Example]) -> str:
    return "\n".join(f"{e.label}\t{' '.join(e.text.split())}" for e in examples)


@needs_browser
def test_the_page_tokenizes_every_builtin_example_as_python_does(tiny_bert_bundle: Path) -> None:
    # Prepare: every text of the built-in tasks, and a few that exercise the normaliser's corners
    texts = [
        e.text for name in ("topics", "language") for e in (*load_task(name).train, *load_task(name).test)
    ]
    texts += ["Héllo wörld! ¿Qué? 你好 [MASK] don't\tstop\u200b e-mail $5+3=8 ~x~ naïve café", ""]
    tokenizer = tiny_bert_bundle / "tokenizer.json"
    # Execute
    python = TextEncoder(tokenizer).encode(texts, 32)["input_ids"]
    page = np.array(
        node(
            ROOT / "tests" / "web" / "tokenize.mjs",
            {"tokenizer": str(tokenizer), "texts": texts, "max_length": 32},
            120,
        )
    )
    # Assert
    assert len(texts) > 15_000
    mismatched = [texts[i] for i in np.nonzero((python != page).any(axis=1))[0]]
    assert mismatched == []


@needs_browser
def test_two_phones_and_a_python_client_finish_two_rounds(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    # Prepare: three clients, two rounds; phone 0 reloads after training (its upload never arrived),
    # phone 1's first upload is taken by the server but the answer is lost (it must re-send, same key)
    bundle = open_bundle(tiny_bert_bundle)
    task, builtin = bundle.task("topics"), load_task("topics")
    plan = FederationPlan(rounds=2, local_epochs=3, lr=5e-3, batch_size=8)
    config = ServerConfig(
        bundle_dir=bundle.root, state_dir=tmp_path / "state", plan=plan, min_clients=3, enroll_key=KEY
    )
    write_demo_shards(bundle.root, tmp_path / "state", shards=3)
    pages = [
        {"examples": as_lines(shard(builtin.train, 0, 3, 60)), "reload_before_upload": True},
        {"demo": True, "drop_first_upload": True},  # trains on the shard the server assigns it
    ]
    shots = tmp_path / "shots"
    shots.mkdir()
    python_results: list[RoundResult] = []

    def python_client(url: str) -> None:
        data = encode_examples(bundle, task, shard(builtin.train, 2, 3, 60))
        with FederationClient(url, state_dir=tmp_path / "py") as client:
            client.register(KEY)
            python_results.extend(client.run("topics", trainer_factory, data, bundle=bundle, long_poll_s=5.0))

    # Execute
    with serve_in_thread(config) as url:
        thread = threading.Thread(target=python_client, args=(url,), daemon=True)
        thread.start()
        job = {
            "url": url,
            "key": KEY,
            "chromium": CHROMIUM,
            "shots": str(shots),
            "timeout_s": 300,
            "pages": pages,
        }
        result = node(DRIVER, job, 420)
        thread.join(timeout=60)
        with FederationClient(url, state_dir=tmp_path / "observer") as observer:
            observer.register(KEY)
            history = observer.history("topics")
            final = observer.download_module(task, 2)

    # Assert
    initial = decode_module(bundle.task_file("topics", "module.safetensors").read_bytes(), task)
    for page in result["pages"]:
        assert page["error"] is None and page["phase"].startswith("done"), page["phase"]
        assert page["rounds"][-1] == {"round": 2, "outcome": "accepted"}
        losses = [e["loss"] for e in page["epochs"]]
        assert losses[-1] < losses[0]  # the page's loss fell
        assert page["accuracy"][-1]["which"] == "final" and page["accuracy"][-1]["version"] == 2
        assert page["bytesSent"] >= task.wire_bytes
    assert result["pages"][1]["accuracy"][-1]["examples"] == 15  # the demo shard's held-out items
    reloaded, dropped = result["pages"][0]["events"], result["pages"][1]["events"]
    assert reloaded["reloaded"] and reloaded["before_reload"]["epochs"]  # it had trained when reloaded
    assert dropped["dropped"]
    assert (
        result["pages"][0]["downloaded"] == 0 < result["pages"][0]["cached"]
    )  # reloaded: all from its cache
    assert [(r.round, r.outcome) for r in python_results] == [(1, "accepted"), (2, "accepted")]
    assert [(h["round"], h["updates"]) for h in history] == [(1, 3), (2, 3)]  # no double count
    assert any(not np.allclose(final[n], initial[n]) for n in initial)  # the aggregated module moved
    for name in ("page0_training", "page0_end", "page1_training", "page1_end"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


def trainer_factory(bundle: Bundle, task_id: str) -> OrtTrainer:
    return OrtTrainer(bundle, task_id)


@needs_browser
def test_the_page_and_the_python_runtime_take_the_same_first_steps(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Prepare: one batch of 8 built-in examples, the task's initial module, a learning rate that is not
    # onnxruntime-web's default (the page rescales its AdamW step)
    bundle = open_bundle(tiny_bert_bundle)
    task = bundle.task("topics")
    examples = shard(load_task("topics").train, 0, 1, 8)
    batch = encode_examples(bundle, task, examples)
    lr, steps = 5e-3, 3
    config = ServerConfig(
        bundle_dir=bundle.root,
        state_dir=tmp_path / "state",
        plan=FederationPlan(),
        min_clients=1,
        enroll_key=KEY,
    )
    spec = {
        "task": "topics",
        "texts": [e.text for e in examples],
        "labels": batch["labels"].tolist(),
        "steps": steps,
        "lr": lr,
    }
    # Execute
    trainer = OrtTrainer(bundle, "topics", lr=lr)
    python = [trainer.step(batch) for _ in range(steps)]
    with serve_in_thread(config) as url:
        page = node(
            DRIVER,
            {"url": url, "key": KEY, "chromium": CHROMIUM, "shots": str(tmp_path), "parity": spec},
            300,
        )
    # Assert
    np.testing.assert_allclose(page["parity"], python, rtol=LOSS_TOLERANCE)
    assert python[-1] < python[0]


@needs_browser
def test_the_page_drops_the_padding_columns_the_python_runtime_drops(tiny_bert_bundle: Path) -> None:
    # Prepare: batches of 8 built-in texts padded to the task's 32 tokens, and a batch of one full row
    bundle = open_bundle(tiny_bert_bundle)
    arrays = encode_examples(bundle, bundle.task("topics"), load_task("topics").train[:160])
    batches = [{k: v[i : i + 8] for k, v in arrays.items()} for i in range(0, 160, 8)]
    full = {k: v.copy() for k, v in batches[0].items()}
    full["attention_mask"][3] = 1
    batches.append(full)
    # Execute
    job = {"batches": [{k: v.tolist() for k, v in b.items()} for b in batches]}
    page = node(ROOT / "tests" / "web" / "trim.mjs", job, 60)
    # Assert: the same columns as runtime/bucketing.py, and most batches shorter than 32
    python = [trim_padding(b) for b in batches]
    assert [{k: v.tolist() for k, v in b.items()} for b in python] == page
    lengths = [len(b["input_ids"][0]) for b in page]
    assert lengths[-1] == 32 and sum(n < 32 for n in lengths) >= len(lengths) // 2, lengths
