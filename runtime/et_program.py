"""An ExecuTorch program run through fedyolo's runner library (`runtime/native/fedyolo_et_runner.cpp`),
with numpy arrays in and out: no torch, no ExecuTorch Python bindings (which link libtorch).

The library wraps ExecuTorch's C++ `Module`: the `.pte` and its `.ptd` data file memory mapped, inputs
passed by pointer, outputs returned as numpy views of the method's own memory (not copies): a view stays
valid until the next run of the program, and writing it writes the program's tensor (how the trainer
updates parameters in place). Each view keeps its program open.

    python -m fedyolo.runtime.et_program build     # g++ against the executorch wheel's headers
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.runtime import et_kernels
from fedyolo.runtime.errors import FedyoloError

SOURCE = Path(__file__).parent / "native" / "fedyolo_et_runner.cpp"
LIBRARY = Path(__file__).parent / "native" / "libfedyolo_et_runner.so"
# the C++ runtime and its kernels (optimized, with the portable ones under them): registered when loaded
LIBRARIES = ("executorch", "executorch_kernels_optimized")
# builds the runner and the kernel library (`et_kernels`) that default programs call
BUILD_HINT = "build it with `python -m fedyolo.runtime.et_program build` (needs g++ and the executorch extra)"
MAX_DIMS = 16  # ExecuTorch's kTensorDimensionLimit, as in the library's Value
# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h)
SCALAR_TYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.uint8),
    1: np.dtype(np.int8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.int64),
    5: np.dtype(np.float16),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    11: np.dtype(np.bool_),
}
INPUT_TYPES = {dtype: code for code, dtype in SCALAR_TYPES.items()}
Output = np.ndarray | int | float | bool | str | None
_KIND_NONE, _KIND_TENSOR, _KIND_INT, _KIND_DOUBLE, _KIND_BOOL, _KIND_STRING = range(6)


class ProgramError(FedyoloError):
    """ExecuTorch refused a program, a method or an input; the message names which and why."""


class _Value(ctypes.Structure):
    """One output, as `Value` in the library fills it."""

    _fields_ = [
        ("kind", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("pad", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("data", ctypes.c_void_p),
        ("length", ctypes.c_int64),
        ("integer", ctypes.c_int64),
        ("number", ctypes.c_double),
    ]


_library: list[ctypes.CDLL] = []


def library_path() -> Path:
    """Where the library is: $FEDYOLO_ET_RUNNER, else beside its source."""
    return Path(os.environ.get("FEDYOLO_ET_RUNNER", LIBRARY))


def runner() -> ctypes.CDLL:
    """The runner library, loaded once (with the ExecuTorch runtime and kernels it links)."""
    if _library:
        return _library[0]
    path = library_path()
    if not path.is_file():
        raise FedyoloError(
            f"the executorch backend needs fedyolo's runner library, {path} is missing: {BUILD_HINT}"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise FedyoloError(
            f"fedyolo's runner library {path} does not load ({e}); install ExecuTorch with "
            f"`pip install 'fedyolo[executorch]' -c constraints.txt`, then {BUILD_HINT}"
        ) from e
    lib.fedyolo_et_error.restype = ctypes.c_char_p
    lib.fedyolo_et_open.restype = ctypes.c_void_p
    lib.fedyolo_et_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.fedyolo_et_close.argtypes = [ctypes.c_void_p]
    lib.fedyolo_et_load_method.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.fedyolo_et_run.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.fedyolo_et_outputs.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Value), ctypes.c_int]
    _library.append(lib)
    return lib


def _error(lib: ctypes.CDLL) -> str:
    return bytes(lib.fedyolo_et_error()).decode(errors="replace")


class Program:
    """One `.pte` (with its `.ptd` data file), its methods run on numpy arrays."""

    def __init__(self, program: Path, data: Path | None = None) -> None:
        self._lib = runner()
        self.path = program
        handle = self._lib.fedyolo_et_open(str(program).encode(), str(data).encode() if data else None)
        if not handle:
            raise ProgramError(_error(self._lib))
        self._handle: int = handle

    def load_method(self, method: str) -> None:
        """Prepares `method` now (its memory, kernels and data), so a missing operator is found here."""
        if self._lib.fedyolo_et_load_method(self._handle, method.encode()) != 0:
            raise ProgramError(f"{self.path}: {_error(self._lib)}")

    def run(self, method: str, inputs: Sequence[np.ndarray] = ()) -> list[Output]:
        """`method` on `inputs` (float32/int64/... arrays, any shape the program accepts); its outputs,
        tensors as views of the program's memory valid until the next run."""
        arrays = [np.ascontiguousarray(a) for a in inputs]
        for i, a in enumerate(arrays):
            if a.dtype not in INPUT_TYPES:
                raise ProgramError(
                    f"{self.path}: input {i} of method {method!r} is {a.dtype}; ExecuTorch takes "
                    f"{', '.join(str(t) for t in INPUT_TYPES)}"
                )
        n = len(arrays)
        dtypes = (ctypes.c_int32 * n)(*(INPUT_TYPES[a.dtype] for a in arrays))
        ndims = (ctypes.c_int32 * n)(*(a.ndim for a in arrays))
        flat = [d for a in arrays for d in a.shape]
        shapes = (ctypes.c_int64 * max(1, len(flat)))(*flat)
        data = (ctypes.c_void_p * n)(*(a.ctypes.data for a in arrays))
        count = self._lib.fedyolo_et_run(self._handle, method.encode(), n, dtypes, ndims, shapes, data)
        if count < 0:
            raise ProgramError(f"{self.path}: {_error(self._lib)}")
        values = (_Value * count)()
        self._lib.fedyolo_et_outputs(self._handle, values, count)
        return [self._output(v) for v in values]

    def _output(self, v: _Value) -> Output:
        if v.kind == _KIND_TENSOR:
            shape = tuple(v.shape[: v.ndim])
            dtype = SCALAR_TYPES.get(v.dtype)
            if dtype is None:
                raise ProgramError(
                    f"{self.path} returns a tensor of ExecuTorch dtype {v.dtype}, which fedyolo does not read"
                )
            if not v.length:
                return np.zeros(shape, dtype)
            memory = (ctypes.c_char * v.length).from_address(v.data)
            memory._program = self  # the view keeps the program open
            return np.frombuffer(memory, dtype).reshape(shape)
        if v.kind == _KIND_INT:
            return int(v.integer)
        if v.kind == _KIND_DOUBLE:
            return float(v.number)
        if v.kind == _KIND_BOOL:
            return bool(v.integer)
        if v.kind == _KIND_STRING:
            return ctypes.string_at(v.data, v.length).decode() if v.length else ""
        if v.kind == _KIND_NONE:
            return None
        raise ProgramError(
            f"{self.path} returns an output of a kind fedyolo does not read (a list or an object)"
        )

    def __del__(self) -> None:
        # only once no output view is left (each view holds the program); not at all if opening failed
        if getattr(self, "_handle", None):
            self._lib.fedyolo_et_close(self._handle)


def build(out: Path | None = None) -> Path:
    """Compiles the runner library (to `out`, default beside its source); returns its path."""
    return et_kernels.build(out or library_path(), SOURCE, LIBRARIES)


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m fedyolo.runtime.et_program build")
    print(build())
    print(et_kernels.build())  # the kernels a program exported with the default `--kernels fedyolo` calls
