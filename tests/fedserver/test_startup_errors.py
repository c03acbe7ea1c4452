"""`fedyolo serve` over a state it cannot use says why and what to do in one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.synthetic import build_bundle, head_module

from .conftest import ENROLL_KEY


@contextmanager
def small_file_system(path: Path, options: str) -> Iterator[None]:
    """A tmpfs mounted at `path` (read-only, or a few KB): needs root; skips the test where it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.decode().strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def serve(bundle: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "fedyolo.cli", "serve", str(bundle), "--state-dir", str(state_dir)]
    args += ["--enroll-key", ENROLL_KEY, "--port", "0"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def corrupt_database(state: Path, stack: ExitStack) -> None:
    state.mkdir()
    (state / "fedserver.sqlite3").write_bytes(b"this is not an SQLite database at all" * 100)


def file_instead_of_blob_dir(state: Path, stack: ExitStack) -> None:
    state.mkdir()
    (state / "blobs").write_text("a file where the blob folder should be")


def read_only_state_dir(state: Path, stack: ExitStack) -> None:
    if os.geteuid() != 0:
        state.mkdir()
        state.chmod(0o555)
    else:  # root writes through permissions: a read-only file system instead
        stack.enter_context(small_file_system(state, "ro,size=64k"))


def full_disk(state: Path, stack: ExitStack) -> None:
    stack.enter_context(small_file_system(state, "size=24k"))


@pytest.mark.parametrize(
    "make_state,cause,fix",
    [
        (corrupt_database, "not a readable fedserver database", "restore it from a backup"),
        (file_instead_of_blob_dir, "a file is in the way", "move it away"),
        (read_only_state_dir, "cannot write", "make it writable"),
        (full_disk, "no space left", "free some space"),
    ],
    ids=["corrupt-database", "blob-dir-is-a-file", "read-only", "full-disk"],
)
def test_a_state_the_server_cannot_use_is_one_line_with_cause_and_fix(
    tmp_path: Path, make_state: Callable[[Path, ExitStack], None], cause: str, fix: str
) -> None:
    # Prepare
    bundle = build_bundle(tmp_path / "bundle", tasks={"topics": head_module(64, 5)})
    state = tmp_path / "state"
    with ExitStack() as stack:
        make_state(state, stack)
        # Execute
        run = serve(bundle, state)
    # Assert
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr[-3000:]
    assert cause in errors[0] and fix in errors[0] and "--state-dir" in errors[0], errors[0]
