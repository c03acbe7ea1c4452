"""The demo's results as people read them: a rich table per task, the failures it survived, a JSON file
and a PNG plot (accuracy per round beside the fully-local baseline)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _short(name: str, keep: int = 32) -> str:
    return name if len(name) <= keep else "..." + name[-keep:]


def minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s} s"


def task_table(task_id: str, t: dict[str, Any], config: dict[str, Any]) -> Table:
    cut = f" of {t['train_available']}" if t["train_used"] < t["train_available"] else ""
    table = Table(
        title=f"{task_id}: federated {t['module_kind']}, {len(t['client_sizes'])} clients (alpha "
        f"{config['alpha']:g}), {t['train_used']}{cut} train examples, {t['test_used']} held out",
        title_justify="left",
    )
    for column in (
        "round",
        "updates",
        "examples",
        "train loss",
        "held-out acc",
        "uploaded",
        "downloaded",
        "s",
    ):
        table.add_column(column, justify="right")
    for row in t["rounds"]:
        if row["round"] == 0:
            table.add_row("0 (initial)", "", "", "", _pct(row["accuracy"]), "", "", "")
            continue
        loss = row.get("train_loss")
        table.add_row(
            str(row["round"]),
            str(row["updates"]),
            str(row["examples"]),
            "-" if loss is None else f"{loss:.3f}",
            _pct(row["accuracy"]),
            human_bytes(row["uploaded_bytes"]),
            human_bytes(row["downloaded_bytes"]),
            f"{row['seconds']:.0f}",
        )
    return table


def task_lines(t: dict[str, Any], config: dict[str, Any]) -> list[str]:
    b = t["bytes"]
    module = b["uploaded"] + b["downloaded"]
    lines = [
        f"traffic: module {human_bytes(b['uploaded'])} up + {human_bytes(b['downloaded'])} down = "
        f"{human_bytes(module)} in {b['uploads']} uploads and {b['downloads']} downloads; full fine-tuning "
        f"({human_bytes(b['full_finetuning_per_transfer'])} a transfer) would send "
        f"{human_bytes(b['full_finetuning_total'])}: {b['ratio']:,.0f}x more"
    ]
    epochs = config["rounds"] * config["local_epochs"]
    if t["local"]:
        each = ", ".join(f"{e['accuracy']:.1%}" for e in t["local"])
        lines.append(
            f"fully-local baseline (each client alone, {epochs} epochs on its own share): mean "
            f"{t['local_mean_accuracy']:.1%} (clients: {each}); federated after {config['rounds']} rounds: "
            f"{_pct(t['federated_final_accuracy'])}"
        )
    else:
        lines.append("fully-local baseline: not finished (see the failures below)")
    return lines


def chaos_table(result: dict[str, Any]) -> Table | None:
    events = result["chaos"] + result["failures"]
    if not events:
        return None
    table = Table(title="failures during the run (the run went on)", title_justify="left")
    for column in ("what", "who", "task", "round", "outcome"):
        table.add_column(column)
    for e in result["chaos"]:
        rounds = {r["round"]: r for r in result["tasks"].get(e.get("task", ""), {}).get("rounds", [])}
        closed = rounds.get(e.get("round"))
        clients = result["config"]["clients"]
        closed_text = (
            f"round {e.get('round')} closed with {closed['updates']}/{clients} updates" if closed else ""
        )
        if e["kind"] == "kill":
            what = f"SIGKILL at {e['percent']} % of its training"
            outcome = f"restarted from its state dir; {closed_text}"
        elif e["kind"] == "restart":
            continue
        elif e["kind"] == "nan_update":
            what = "uploaded a module holding NaN"
            detail = e["detail"].replace(e["tensor"], _short(e["tensor"]))
            outcome = (
                f"refused: HTTP {e['status']} {e['code']} ({detail}); {closed_text}"
                if e["refused"]
                else "ACCEPTED (the server should have refused it)"
            )
        else:
            what, outcome = e["kind"], str(e)
        table.add_row(what, e["client"], e["task"], str(e["round"]), outcome)
    for f in result["failures"]:
        table.add_row(f["kind"], f.get("process", ""), "", "", f.get("detail") or f.get("log_tail", ""))
    return table


def isolation_line(result: dict[str, Any]) -> str | None:
    iso = result["isolation"]
    if iso is None:
        return None
    same = iso["sha256_before"] == iso["sha256_after"]
    return (
        f"no forgetting: after training {iso['other']} ({iso['other_trained_examples']} examples, one epoch) in "
        f"the process that holds both tasks over one backbone, the {iso['task']} module is "
        f"{'bit-identical' if same else 'CHANGED'} (sha256 {iso['sha256_before'][:12]} -> {iso['sha256_after'][:12]}) "
        f"and its held-out accuracy {_pct(iso['accuracy_before'])} -> {_pct(iso['accuracy_after'])}; "
        f"backbone.bin {'unchanged' if iso['backbone_unchanged'] else 'CHANGED'}"
    )


def print_report(result: dict[str, Any], console: Console) -> None:
    config = result["config"]
    for task_id, t in result["tasks"].items():
        console.print(task_table(task_id, t, config))
        for line in task_lines(t, config):
            console.print(line, highlight=False)
        console.print()
    table = chaos_table(result)
    if table is not None:
        console.print(table)
    isolation = isolation_line(result)
    if isolation is not None:
        console.print(isolation, highlight=False)
    times = result["times"]
    cuts = [
        f"{k} {t['train_used']} of {t['train_available']}"
        for k, t in result["tasks"].items()
        if t["train_used"] < t["train_available"]
    ]
    if cuts:
        console.print(
            f"train splits cut to --train-per-task {config['train_per_task']} (stratified, seeded) to fit the "
            f"time budget: {', '.join(cuts)}; --train-per-task 0 uses all",
            highlight=False,
        )
    console.print(
        f"wall time {minutes(times.get('total_s', 0))}: export {minutes(times.get('export_s', 0))}"
        f"{'' if result['exported'] else ' (bundle reused)'}, federated rounds + baseline "
        f"{minutes(times.get('federation_s', 0))}; {result['machine']['cpus']} CPU cores",
        highlight=False,
    )


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Held-out accuracy of the global module per round, per task, beside the fully-local baseline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no plot written")
        return None
    tasks = result["tasks"]
    config = result["config"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, (task_id, t) in zip(axes[0], tasks.items(), strict=True):
        rows = [r for r in t["rounds"] if r["accuracy"] is not None]
        ax.plot(
            [r["round"] for r in rows],
            [100 * r["accuracy"] for r in rows],
            marker="o",
            label=f"federated {t['module_kind']} ({len(t['client_sizes'])} clients)",
        )
        if t["local"]:
            accs = [100 * e["accuracy"] for e in t["local"]]
            ax.axhspan(min(accs), max(accs), color="tab:orange", alpha=0.15)
            ax.axhline(
                sum(accs) / len(accs),
                color="tab:orange",
                linestyle="--",
                label=f"fully local, {config['rounds'] * config['local_epochs']} epochs (mean, range)",
            )
        b = t["bytes"]
        ax.set_title(
            f"{task_id}: {human_bytes(b['uploaded'] + b['downloaded'])} sent, "
            f"{b['ratio']:,.0f}x less than full fine-tuning",
            fontsize=10,
        )
        ax.set_xlabel("round")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(range(config["rounds"] + 1))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(
        f"fedyolo demo: {result['backbone']['id']} frozen, alpha {config['alpha']:g}, "
        f"{config['local_epochs']} local epoch(s) a round",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
