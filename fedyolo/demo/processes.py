"""The demo's child processes (the server, the clients, the observer): started, watched, killed, restarted,
and always stopped when the demo ends, however it ends.

Each child gets its own session, so a Ctrl-C in the terminal reaches only the orchestrator, which then
stops them in order. On Linux each child also asks the kernel to kill it if the orchestrator dies
(PR_SET_PDEATHSIG), so even a `kill -9` of the demo leaves no clients behind. Children must be started
from the main thread: the kernel ties that signal to the thread that forked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


# Held back while a child is forked: a Ctrl-C that lands inside Python's at-fork hooks is printed as
# "Exception ignored" and lost, and the demo would run on. Blocked, it arrives once Popen returns.
_HELD = {signal.SIGINT, signal.SIGTERM}


def _child_setup(mask: Iterable[int]) -> Callable[[], None]:
    """What a child runs between fork and exec: the parent's own signal mask back, and on Linux
    death with the parent."""

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if sys.platform == "linux":
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


@dataclass
class Child:
    """One child process and how to start it again."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    expected_exit: bool = False  # killed on purpose (chaos), not a failure
    _log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Children:
    """Every child of the demo, by name."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}

    def start(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> Child:
        if name in self.children and self.children[name].running:
            raise RuntimeError(f"{name} is already running")
        child = self.children[name] = Child(name, list(argv), log_path, env)
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        child._log = child.log_path.open("ab")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            child.popen = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=child._log,
                stderr=subprocess.STDOUT,
                env=child.env,
                start_new_session=True,
                preexec_fn=_child_setup(mask),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a held Ctrl-C is raised here
        child.starts += 1
        child.expected_exit = False

    def restart(self, name: str) -> Child:
        """Start a child again with the same command (its state dir makes it resume)."""
        child = self.children[name]
        if child.running:
            raise RuntimeError(f"{name} is still running")
        with child.log_path.open("ab") as log:
            log.write(f"--- restarted by the demo (start {child.starts + 1}) ---\n".encode())
        self._spawn(child)
        return child

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` and wait for the exit, recorded as expected (`reap` will not report it)."""
        child = self.children[name]
        if child.popen is None or not child.running:
            return
        child.expected_exit = True
        child.popen.send_signal(sig)
        child.exit_codes.append(child.popen.wait())
        child.popen = None
        if child._log is not None:
            child._log.close()

    def reap(self) -> list[Child]:
        """Children that exited since the last call (their exit codes recorded)."""
        exited = []
        for child in self.children.values():
            if child.popen is not None and child.popen.poll() is not None:
                child.exit_codes.append(child.popen.returncode)
                child.popen = None
                if child._log is not None:
                    child._log.close()
                exited.append(child)
        return exited

    def running(self, prefix: str = "") -> list[Child]:
        return [c for c in self.children.values() if c.running and c.name.startswith(prefix)]

    def stop_all(self, grace_s: float = 10.0, order: Callable[[Child], int] | None = None) -> None:
        """SIGTERM every running child (in `order`), then SIGKILL what is still there after `grace_s`."""
        alive = sorted(self.running(), key=order or (lambda c: 0))
        for child in alive:
            if child.popen is not None:
                child.expected_exit = True
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in alive:
            if child.popen is None:
                continue
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        self.reap()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this one, offline, wide log lines (rich wraps at the terminal width)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env
