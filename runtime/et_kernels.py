"""fedyolo's ExecuTorch kernel library (`runtime/native/fedyolo_et_kernels.cpp`): build it, load it.

A program exported with `kernels="fedyolo"` runs its GEMMs as `fedyolo::linear.out` / `fedyolo::mm.out`:
a BLAS sgemm on every core (numpy's bundled OpenBLAS, or the system's libopenblas) instead of
ExecuTorch's one-core kernels. The library registers them into the ExecuTorch runtime that the Python
bindings use, so it must be loaded before such a program is; a program that needs it while it is
missing fails with a one-line error that says how to build it.

    python -m fedyolo.runtime.et_kernels build     # g++ against the executorch wheel's headers
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from fedyolo.runtime.errors import FedyoloError

SOURCE = Path(__file__).parent / "native" / "fedyolo_et_kernels.cpp"
LIBRARY = Path(__file__).parent / "native" / "libfedyolo_et_kernels.so"
OP_PREFIX = b"fedyolo::"  # the kernels' namespace, as it appears in a program's operator table
BUILD_HINT = "build it with `python -m fedyolo.runtime.et_kernels build` (needs g++)"
_loaded: list[Path] = []


def library_path() -> Path:
    """Where the library is: $FEDYOLO_ET_KERNELS, else beside its source."""
    return Path(os.environ.get("FEDYOLO_ET_KERNELS", LIBRARY))


def program_needs_kernels(program: Path, chunk: int = 1 << 20) -> bool:
    """Whether the `.pte` calls the library's operators (its operator table names them). Read in chunks:
    a `full` module's program holds the whole model, and reading it at once would raise peak RSS."""
    tail = b""
    with program.open("rb") as f:
        while block := f.read(chunk):
            if OP_PREFIX in tail + block:
                return True
            tail = block[-len(OP_PREFIX) :]
    return False


def blas_path() -> str:
    """The BLAS the kernels call: $FEDYOLO_BLAS, else numpy's bundled OpenBLAS, else the system's."""
    if env := os.environ.get("FEDYOLO_BLAS"):
        return env
    spec = importlib.util.find_spec("numpy")
    if spec is not None and spec.origin is not None:
        bundled = sorted((Path(spec.origin).parent.parent / "numpy.libs").glob("libscipy_openblas*.so"))
        if bundled:
            return str(bundled[0])
    found = ctypes.util.find_library("openblas")
    if found is None:
        raise FedyoloError(
            "the fedyolo ExecuTorch kernels need a BLAS: install numpy's wheel or apt `libopenblas0`, "
            "or set FEDYOLO_BLAS to a libopenblas path"
        )
    return found


def load(threads: int = 0) -> Path:
    """Loads and registers the kernels once, their GEMMs on `threads` threads (0: the cores this process
    may run on); returns the library's path."""
    if _loaded:
        return _loaded[0]
    path = library_path()
    if not path.is_file():
        raise FedyoloError(
            f"this ExecuTorch program needs fedyolo's kernel library, {path} is missing: {BUILD_HINT}"
        )
    lib = ctypes.CDLL(str(path))
    lib.fedyolo_et_kernels_error.restype = ctypes.c_char_p
    if threads < 1:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if lib.fedyolo_et_kernels_init(blas_path().encode(), ctypes.c_int(threads)) != 0:
        raise FedyoloError(
            f"fedyolo's ExecuTorch kernels failed to load: {lib.fedyolo_et_kernels_error().decode()}"
        )
    _loaded.append(path)
    return path


def _executorch_root() -> Path:
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise FedyoloError(
            "building the kernels needs ExecuTorch: `pip install 'fedyolo[executorch]' -c constraints.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def build_command(
    out: Path, source: Path = SOURCE, libraries: tuple[str, ...] = ("executorch",)
) -> list[str]:
    """g++ of `source` against the wheel's headers (with the definitions its cmake config names), linked
    to the wheel's `libraries` (each loaded with ours, even where no symbol of it is used: a kernel
    library registers its kernels when loaded)."""
    root = _executorch_root()
    return [
        os.environ.get("CXX", "g++"),
        "-O3",
        # with -O3, these let the erf/gelu loop's clamp be min/max instructions, so it vectorises (the
        # source has no NaN or signed-zero tests; a NaN activation gives a finite erf, NaN still
        # reaches the loss through gelu's x·(...) and the other ops)
        "-fno-math-errno",
        "-ffinite-math-only",
        "-fno-signed-zeros",
        "-fno-trapping-math",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fvisibility=hidden",
        "-DC10_USING_CUSTOM_GENERATED_MACROS",
        "-DET_EVENT_TRACER_ENABLED",
        f"-I{root / 'include'}",
        f"-I{root / 'include/executorch/runtime/core/portable_type/c10'}",
        "-o",
        str(out),
        str(source),
        f"-L{root / 'lib'}",
        "-Wl,--no-as-needed",
        *(f"-l{library}" for library in libraries),
        f"-Wl,-rpath,{root / 'lib'}",
        "-ldl",
    ]


def build(
    out: Path | None = None, source: Path = SOURCE, libraries: tuple[str, ...] = ("executorch",)
) -> Path:
    """Compiles `source` (default: the kernels) to `out` (default beside the source); returns its path."""
    out = out or library_path()
    # to a new file, then renamed over the old: a process that has the old one loaded keeps its copy
    # (g++ writing in place would change the pages under it)
    partial = out.with_name(f".{out.name}.{os.getpid()}")
    command = build_command(partial, source, libraries)
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
        partial.replace(out)
    except FileNotFoundError as e:
        raise FedyoloError(
            f"building {out.name} needs a C++ compiler ({e}): apt install g++, or set CXX"
        ) from e
    except subprocess.CalledProcessError as e:
        last = (e.stderr.strip().splitlines() or ["no output"])[-1]
        raise FedyoloError(f"building {out.name} failed ({' '.join(command)}): {last}") from e
    finally:
        partial.unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m fedyolo.runtime.et_kernels build")
    print(build())
