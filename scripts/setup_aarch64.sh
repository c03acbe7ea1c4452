#!/usr/bin/env bash
# Set up the fedyolo runtime on aarch64 Linux (Jetson, Raspberry Pi 5, Graviton): see docs/aarch64.md.
#
#   bash scripts/setup_aarch64.sh [VENV]            # default VENV: ~/.fedyolo-venv
#   ORT_TRAINING_WHEEL=/path/onnxruntime_training-1.19.2-cp311-...aarch64.whl bash scripts/setup_aarch64.sh
#   BUILD_ORT=1 bash scripts/setup_aarch64.sh       # build ORT training from source (~1-3 h on a Jetson)
#
# PyPI has no onnxruntime-training wheel for aarch64 (any version), so training needs a wheel built with
# `--enable_training` (BUILD_ORT=1 builds one; a wheel from an earlier build can be given instead).
# Without it, the inference half works from PyPI: `fedyolo predict` on a folder from
# `fedyolo export onnx-inference` (onnxruntime 1.19.2 has aarch64 wheels).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$HOME/.fedyolo-venv}"
PY="${PYTHON:-python3.11}"
ORT_VERSION=1.19.2

[ "$(uname -m)" = aarch64 ] || { echo "error: this is $(uname -m), not aarch64; on x86-64 use 'make setup'" >&2; exit 2; }
command -v "$PY" >/dev/null || { echo "error: $PY not found; install Python 3.11 (e.g. apt-get install python3.11-venv)" >&2; exit 2; }

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip

wheel="${ORT_TRAINING_WHEEL:-}"
if [ -z "$wheel" ] && [ "${BUILD_ORT:-0}" = 1 ]; then
  # ONNX Runtime's own build script; --enable_training adds the on-device training API (Module, Optimizer).
  src="${ORT_SRC:-$HOME/onnxruntime}"
  [ -d "$src" ] || git clone --depth 1 --branch "v$ORT_VERSION" --recursive https://github.com/microsoft/onnxruntime "$src"
  "$VENV/bin/pip" install -q "numpy<3" packaging wheel setuptools
  (cd "$src" && PATH="$VENV/bin:$PATH" ./build.sh --config Release --build_shared_lib --parallel \
      --enable_training --build_wheel --skip_tests --allow_running_as_root)
  wheel="$(ls "$src"/build/Linux/Release/dist/onnxruntime_training-*.whl | head -1)"
fi

if [ -n "$wheel" ]; then
  # fedyolo's base install, with the locally built ORT training wheel in place of PyPI's x86-64 one
  "$VENV/bin/pip" install -q "$wheel"
  "$VENV/bin/pip" install -q -c "$REPO/constraints.txt" "$REPO"
  "$VENV/bin/python" -c "from fedyolo.runtime.ort_import import load_ort; load_ort().Module; print('ORT training: ok')"
else
  # inference only: the runtime without ORT training (pip would refuse the base install's training pin)
  "$VENV/bin/pip" install -q -c "$REPO/constraints.txt" "onnxruntime==$ORT_VERSION" onnx numpy tokenizers \
      safetensors typer rich httpx
  "$VENV/bin/pip" install -q --no-deps "$REPO"
  echo "ORT training: not installed (no aarch64 wheel on PyPI); give ORT_TRAINING_WHEEL=... or BUILD_ORT=1"
fi

if [ "${WITH_EXECUTORCH:-0}" = 1 ]; then
  "$VENV/bin/pip" install -q "executorch==1.5.1"  # manylinux_2_28_aarch64 wheel on PyPI (pulls torch)
fi
echo "done: $VENV/bin/fedyolo (try: fedyolo predict FOLDER 'hello' on an export from fedyolo export onnx-inference)"
