"""`fedyolo demo`: run the demo, print the report, save results.json, demo.png and summary.txt."""

from __future__ import annotations

import io
import signal
import sys
import threading
from types import FrameType
from typing import Any

from rich.console import Console

from fedyolo.demo.config import DemoConfig
from fedyolo.demo.orchestrate import Demo
from fedyolo.demo.report import plot, print_report, write_json

SUMMARY_WIDTH = 120


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def demo_command(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo end to end; a SIGTERM stops it as cleanly as Ctrl-C (children stopped first)."""
    # Piped or logged output gets rich's 80 columns by default: too narrow for the round tables.
    console = console or (Console() if sys.stdout.isatty() else Console(width=SUMMARY_WIDTH))
    main = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        result = Demo(config, console).run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    console.print()
    print_report(result, console)
    out = config.out
    write_json(result, out / "results.json")
    png = plot(result, out / "demo.png")
    text = Console(file=io.StringIO(), width=SUMMARY_WIDTH, record=True, color_system=None)
    print_report(result, text)
    (out / "summary.txt").write_text(text.export_text())
    console.print(
        f"results: {out / 'results.json'}, {out / 'summary.txt'}"
        + (f", plot: {png}" if png else "")
        + f"; logs: {out / 'run' / 'logs'}",
        highlight=False,
    )
    return result
