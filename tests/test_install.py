"""What a user installs: the base package is what a device needs (runtime, client, CLI); the server,
export and built-in data are extras; pyproject.toml holds ranges, constraints.txt the tested pins.

The slow case builds the wheel, installs it with the base requirements alone in a fresh venv, and
trains and joins a federation from there, with neither torch nor fastapi importable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fedyolo.cli import main
from fedyolo.cli.extras import EXTRAS, Extra, missing_extra
from tests.test_cli_federation import free_port, wait_until_serving

REPO = Path(__file__).resolve().parents[1]
KEY = "a-test-enrollment-key-0002"
# What the wheel is built from: pyproject.toml names README.md; fedyolo/{runtime,export,fedserver}
# are links to the top-level folders.
SOURCES = ("pyproject.toml", "README.md", "fedyolo", "runtime", "export", "fedserver")


def pins(constraints: str = "constraints.txt") -> dict[str, str]:
    """A constraints file as {normalised name: version}."""
    out = {}
    for line in (REPO / constraints).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def requirements() -> list[tuple[str, Requirement]]:
    """Every requirement of pyproject.toml, with the extra it belongs to ('' for the base install)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [("", Requirement(r)) for r in project["dependencies"]]
    for extra, listed in project["optional-dependencies"].items():
        reqs += [(extra, Requirement(r)) for r in listed]
    return reqs


def test_constraints_pin_every_requirement_inside_its_range() -> None:
    pinned = pins()
    for extra, req in requirements():
        if extra == "flower":  # Flower's pins clash with the server's: its own environment, tested below
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{req} ({extra or 'base'}) has no pin in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is not {req}"


def test_flower_constraints_pin_flower_and_stay_inside_every_range() -> None:
    # `make setup-flower` installs '.[export,server,data,flower]' with flower-constraints.txt
    pinned = pins("flower-constraints.txt")
    for extra, req in requirements():
        name = req.name.lower().replace("_", "-")
        if extra == "flower":
            assert name in pinned, f"{req} has no pin in flower-constraints.txt"
        if name in pinned and extra != "dev":
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"{name}=={pinned[name]} is not {req}"
            )


def test_the_base_install_holds_no_server_export_or_data_package() -> None:
    base = {req.name.lower() for extra, req in requirements() if not extra}
    for heavy in (
        "torch",
        "transformers",
        "peft",
        "fastapi",
        "uvicorn",
        "uvloop",
        "chatterbot-corpus",
        "pyyaml",
    ):
        assert heavy not in base


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve", "bundle"], "error: the server needs the 'server' extra: pip install 'fedyolo[server]'"),
        (
            ["export", "onnx", "--out", "b"],
            "error: export needs the 'export' extra: pip install 'fedyolo[export]'",
        ),
        (
            ["demo"],
            "error: the demo needs the 'export', 'server', 'data' extras: pip install 'fedyolo[export,server,data]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    argv: list[str], line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every extra looks uninstalled
    for name in EXTRAS:
        monkeypatch.setitem(EXTRAS, name, Extra(name, required=("fedyolo_not_installed",), provides=()))
    monkeypatch.setattr(sys, "argv", ["fedyolo", *argv])

    # Execute
    with pytest.raises(SystemExit) as exited:
        main()

    # Assert
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == line


def test_a_late_import_of_an_extras_module_names_the_extra() -> None:
    error = missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"))
    assert error is not None
    assert (
        str(error)
        == "uvicorn is not installed: it comes with the 'server' extra: pip install 'fedyolo[server]'"
    )
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None


def build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("fedyolo-*.whl")
    return wheel


def source_modules() -> set[str]:
    """Every .py file of fedyolo, following its links to the top-level folders, as a path in the wheel."""
    root = REPO / "fedyolo"
    return {str(p.relative_to(REPO)) for p in root.rglob("*.py") if "__pycache__" not in p.parts} | {
        f"fedyolo/{p.relative_to(REPO)}"
        for part in ("runtime", "export", "fedserver")
        for p in (REPO / part).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def base_venv(tmp_path: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel and its base requirements at the tested pins; its bin folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # This interpreter's pip installs into the new venv: no pip of its own to bootstrap, no .pyc to write.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile",
         "-c", str(REPO / "constraints.txt"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )  # fmt: skip
    return venv / "bin"


@pytest.mark.slow
def test_a_device_trains_and_joins_a_federation_with_the_base_install_alone(
    bundle_copy: Path, tmp_path: Path
) -> None:
    # Prepare: the wheel, a fresh venv with the base install, data, and a server from this environment
    from fedyolo.tasks import load_task, write_examples

    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        assert source_modules() <= set(zf.namelist())
    built = time.monotonic()
    bin_dir = base_venv(tmp_path, wheel)
    installed = time.monotonic()
    topics = load_task("topics")
    train = write_examples(topics.train[:40], tmp_path / "train.jsonl")
    test = write_examples(topics.test[:20], tmp_path / "test.jsonl")
    # Nothing of this checkout or this environment leaks into the venv's processes.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"FEDYOLO_HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}

    def device(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
        )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "fedyolo.cli", "serve", str(bundle_copy), "--port", str(port), "--rounds", "1",
         "--min-clients", "1", "--enroll-key", KEY, "--state-dir", str(tmp_path / "state"),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # Execute: what is importable there, one command per missing extra, training, one federated round
        probe = device(
            bin_dir / "python", "-c",
            "import importlib.util as u, fedyolo; print(fedyolo.__file__); "
            "print(*(u.find_spec(m) is not None for m in ('torch', 'fastapi', 'uvicorn', 'transformers')))",
        )  # fmt: skip
        serve = device("fedyolo", "serve", bundle_copy)
        export = device("fedyolo", "export", "onnx", "--backbone", "tiny-bert", "--out", tmp_path / "b2")
        data = device("fedyolo", "data", "topics", "--out", tmp_path / "t.jsonl")
        trained = device(
            "fedyolo", "train", bundle_copy, "--task", "topics", "--data", train, "--test-data", test,
            "--epochs", "2", "--batch-size", "8", "--save", tmp_path / "module.safetensors",
        )  # fmt: skip
        # the device's questions, torch-free: will it fit and how fast (no matplotlib here: no --plot)
        profiled = device(
            "fedyolo", "profile", bundle_copy, "--task", "topics", "--steps", "3", "--json", tmp_path / "p.json",
        )  # fmt: skip
        plotted = device("fedyolo", "profile", bundle_copy, "--task", "topics", "--plot", tmp_path / "p.png")
        predicted = device(
            "fedyolo", "predict", bundle_copy, "--task", "topics", "--module", tmp_path / "module.safetensors",
            "how are you today?",
        )  # fmt: skip
        wait_until_serving(server, url)
        client = device(
            "fedyolo", "client", url, "--task", "topics", "--data", train, "--enroll-key", KEY, "--threads", "1",
            "--state-dir", tmp_path / "client",
        )  # fmt: skip
    finally:
        server.terminate()
        _, server_err = server.communicate(timeout=30)
    print(
        f"base install: wheel {built - started:.0f} s, venv {installed - built:.0f} s, "
        f"train + round {time.monotonic() - installed:.0f} s"
    )

    # Assert: the venv's own fedyolo, no torch and no server packages in it
    assert probe.returncode == 0, probe.stderr
    where, importable = probe.stdout.splitlines()
    assert Path(where).is_relative_to(bin_dir.parent)
    assert importable == "False False False False"
    # each missing extra is one line that names it
    assert (serve.returncode, serve.stderr.strip()) == (
        2,
        "error: the server needs the 'server' extra: pip install 'fedyolo[server]'",
    )
    assert (export.returncode, export.stderr.strip()) == (
        2,
        "error: export needs the 'export' extra: pip install 'fedyolo[export]'",
    )
    assert data.returncode == 2 and len(data.stderr.strip().splitlines()) == 1
    assert "the 'data' extra: pip install 'fedyolo[data]'" in data.stderr
    # it trained and saved its module, and took part in a round
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "held-out accuracy after 2 epochs" in trained.stdout
    assert (tmp_path / "module.safetensors").stat().st_size > 0
    # it profiled and predicted without torch; the plot names the extra it needs
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert row["step_ms_median"] > 0 and row["rss"]["peak"] > row["rss"]["backbone"] > 0
    assert (plotted.returncode, plotted.stderr.strip()) == (
        2,
        "error: --plot needs the 'plot' extra: pip install 'fedyolo[plot]'",
    )
    assert predicted.returncode == 0 and "how are you today?" in predicted.stdout, predicted.stderr[-2000:]
    assert client.returncode == 0, client.stderr[-2000:] + server_err[-2000:]
    assert "1 updates accepted for task 'topics'" in client.stderr
