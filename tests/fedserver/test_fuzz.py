"""Schemathesis fuzzes the live server against its own OpenAPI document: no 500s, documented answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime.plan import FederationPlan
from tests.synthetic import build_bundle, head_module

from .conftest import ENROLL_KEY


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_nor_undocumented_answer(tmp_path: Path) -> None:
    # Prepare
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency: pip install -e .[dev]"
    bundle = build_bundle(tmp_path / "bundle", tasks={"topics": head_module(64, 5)})
    config = ServerConfig(
        bundle_dir=bundle,
        state_dir=tmp_path / "state",
        plan=FederationPlan(rounds=3),
        min_clients=2,
        enroll_key=ENROLL_KEY,
        max_long_poll_s=0.2,
    )
    with serve_in_thread(config) as url:
        token = httpx.post(f"{url}/v1/clients", json={"enroll_key": ENROLL_KEY}).json()["token"]
        # Execute: every check but positive_data_acceptance (random bytes are schema-valid uploads that
        # the manifest rightly refuses).
        args = [
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ]
        args += ["--max-examples", "40", "--seed", "7", "--workers", "1", "--no-shrink"]
        args += ["--header", f"Authorization: Bearer {token}"]
        run = subprocess.run([st, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        health = httpx.get(f"{url}/healthz").status_code
    # Assert
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and health == 200
