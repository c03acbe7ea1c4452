"""Module weights on the wire: safetensors (never pickle), names and shapes exactly as the manifest says."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedyolo.runtime.errors import ModuleWeightsError
from fedyolo.runtime.manifest import TaskSpec

ModuleWeights = dict[str, np.ndarray]
WIRE_DTYPES = {"float32": np.float32, "float16": np.float16}


def encode_module(weights: ModuleWeights, task: TaskSpec) -> bytes:
    """Serialise module weights for `task`, checked first, cast to the manifest's wire dtype."""
    check_module(weights, task)
    dtype = WIRE_DTYPES[task.wire_dtype]
    return st_save({t.name: np.ascontiguousarray(weights[t.name], dtype=dtype) for t in task.trainable})


def decode_module(body: bytes, task: TaskSpec) -> ModuleWeights:
    """Parse and check a safetensors body for `task`; returns float32 arrays."""
    try:
        raw = st_load(body)
    except (SafetensorError, ValueError, Exception) as e:  # safetensors raises several types on garbage
        raise ModuleWeightsError(f"module weights are not a valid safetensors file ({e})") from e
    weights = {k: v.astype(np.float32, copy=False) for k, v in raw.items()}
    check_module(weights, task, allowed_dtypes=(task.wire_dtype, "float32"), raw=raw)
    return weights


def module_views(body: bytes, task: TaskSpec) -> ModuleWeights:
    """Float32 views into a safetensors body that `decode_module` already accepted (a blob the server stored
    and read back, its hash checked): the manifest's names, shapes and dtypes are checked against the
    header, the values are not scanned again, and nothing is copied (float16 bodies are widened).

    The server's aggregator reads each update of another worker this way: `decode_module` copied every
    tensor and scanned it for NaN, 0.15 ms of a 320 KB update against 0.02 ms here.
    """
    try:
        (size,) = struct.unpack_from("<Q", body)
        header = json.loads(body[8 : 8 + size])
        start = 8 + size
        weights = {}
        for spec in task.trainable:
            info = header[spec.name]
            dtype = WIRE_DTYPES[info["dtype"].lower().replace("f", "float")]
            begin, end = info["data_offsets"]
            count = math.prod(spec.shape)
            if tuple(info["shape"]) != spec.shape or end - begin != count * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {spec.name!r} is {info['shape']}, the manifest says {spec.shape}")
            array = np.frombuffer(body, dtype, count, start + begin).reshape(spec.shape)
            weights[spec.name] = array.astype(np.float32, copy=False)
        if len(header) - ("__metadata__" in header) != len(weights):
            raise ValueError("the body holds tensors the manifest does not name")
    except (KeyError, ValueError, TypeError, struct.error) as e:
        raise ModuleWeightsError(f"a stored module body does not match task {task.task_id!r} ({e})") from e
    return weights


def check_module(
    weights: ModuleWeights,
    task: TaskSpec,
    allowed_dtypes: tuple[str, ...] = ("float32",),
    raw: dict[str, np.ndarray] | None = None,
) -> None:
    """Raise ModuleWeightsError unless `weights` has exactly the manifest's names, shapes and finite values."""
    expected = {t.name: t for t in task.trainable}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ModuleWeightsError(
            f"module weights for task {task.task_id!r} do not match the manifest: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}; send exactly the manifest's trainable tensors"
        )
    for name, spec in expected.items():
        arr = weights[name]
        if tuple(arr.shape) != spec.shape:
            raise ModuleWeightsError(
                f"tensor {name!r} has shape {tuple(arr.shape)}, the manifest says {spec.shape}"
            )
        dtype = str((raw or weights)[name].dtype)
        if dtype not in allowed_dtypes:
            raise ModuleWeightsError(f"tensor {name!r} is {dtype}; expected one of {allowed_dtypes}")
        if not all_finite(arr):
            raise ModuleWeightsError(f"tensor {name!r} holds NaN or Inf values; refusing the update")


def all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf in `array`: its min and max are finite (NaN spreads through both). Two passes and no
    temporary, against a boolean array of the tensor's size for `np.isfinite(array).all()`."""
    return array.size == 0 or (math.isfinite(array.min()) and math.isfinite(array.max()))


def module_sha256(weights: ModuleWeights, task: TaskSpec) -> str:
    """sha256 of the module as it travels (the safetensors body): equal hashes, bit-identical modules."""
    return hashlib.sha256(encode_module(weights, task)).hexdigest()
