"""The backbone, stored once: every frozen tensor in one `backbone/backbone.bin`, and task graphs that
point into it instead of carrying their own copy.

Linear weights are stored already transposed ([in, out]): the exported graphs read them through
`Transpose`, and constant folding at session start would give every session a private transposed
copy, so sharing one copy between tasks would do nothing (DESIGN.md, "loaded once").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from torch import nn

from fedyolo.runtime.manifest import BACKBONE_FILE, TensorSpec

ALIGN = 64  # bytes: every tensor starts on a cache line, so a memory map serves it as is
TRANSPOSED_SUFFIX = ".T"
TENSOR_TYPES = {"float32": TensorProto.FLOAT, "int8": TensorProto.INT8}


@dataclass(frozen=True)
class BackboneLayout:
    """How the backbone's parameters are named and laid out, keyed by the parameter objects' ids."""

    canonical: dict[int, str]  # id(parameter) -> name in the plain backbone
    transposed: frozenset[int]  # ids of linear weights stored as [in, out]
    arrays: dict[str, np.ndarray]  # stored name -> array as stored


def plan_layout(backbone: nn.Module) -> BackboneLayout:
    """Capture names and layout before a module kind rewires the backbone (PEFT renames its layers)."""
    linear = {id(m.weight) for m in backbone.modules() if isinstance(m, nn.Linear)}
    canonical: dict[int, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, p in backbone.named_parameters():
        canonical[id(p)] = name
        data = p.detach().cpu().numpy().astype(np.float32)
        if id(p) in linear:
            arrays[name + TRANSPOSED_SUFFIX] = np.ascontiguousarray(data.T)
        else:
            arrays[name] = np.ascontiguousarray(data)
    return BackboneLayout(canonical, frozenset(linear), arrays)


def stored_name(layout: BackboneLayout, param_id: int) -> str:
    name = layout.canonical[param_id]
    return name + TRANSPOSED_SUFFIX if param_id in layout.transposed else name


def backbone_bytes(arrays: dict[str, np.ndarray]) -> tuple[bytes, tuple[TensorSpec, ...]]:
    """backbone.bin's content and the offset of every tensor in it (sorted by name: deterministic)."""
    parts: list[bytes] = []
    specs: list[TensorSpec] = []
    offset = 0
    for name in sorted(arrays):
        raw = arrays[name].tobytes()
        specs.append(TensorSpec(name, tuple(arrays[name].shape), str(arrays[name].dtype), offset, len(raw)))
        pad = (-len(raw)) % ALIGN
        parts.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    return b"".join(parts), tuple(specs)


@dataclass(frozen=True)
class BackboneBlob:
    """backbone.bin as an export builds it, once: its bytes, every tensor's place in them, their sha256."""

    data: bytes
    tensors: tuple[TensorSpec, ...]
    sha256: str


def build_blob(arrays: dict[str, np.ndarray]) -> BackboneBlob:
    """backbone.bin's content, built and hashed once per export (90 MB for MiniLM)."""
    data, tensors = backbone_bytes(arrays)
    return BackboneBlob(data, tensors, hashlib.sha256(data).hexdigest())


def same_bytes(path: Path, data: bytes, chunk: int = 1 << 22) -> bool:
    """Whether the file at `path` holds exactly `data`: compared through a memory map, chunk by chunk
    (measured on MiniLM's 90 MB: 140 ms, where hashing the file took 335 ms in the same run)."""
    if not path.is_file() or path.stat().st_size != len(data):
        return False
    if not data:
        return True
    stored, built = np.memmap(path, dtype=np.uint8, mode="r"), np.frombuffer(data, dtype=np.uint8)
    return all(
        np.array_equal(stored[start : start + chunk], built[start : start + chunk])
        for start in range(0, len(data), chunk)
    )


def externalize_frozen(
    graph_path: Path,
    frozen: Iterable[tuple[str, str, bool]],
    tensors: dict[str, TensorSpec],
    location: str,
    rewrite: Callable[[onnx.ModelProto], None] | None = None,
) -> None:
    """Turn frozen graph inputs into initializers that live in backbone.bin.

    frozen: (graph name, stored name, stored transposed). A `Transpose` that only undid our storage
    layout is removed and its readers rewired; any other reader of a transposed tensor gets a Transpose.
    rewrite: run on the rewired model before the initializers are added (the int8 backbone's kernels);
    every backbone.bin tensor a node then reads becomes an initializer of its stored dtype.
    """
    model = onnx.load(str(graph_path))
    graph = model.graph
    frozen = list(frozen)
    drop = {g for g, _, _ in frozen}
    kept_inputs = [i for i in graph.input if i.name not in drop]
    del graph.input[:]
    graph.input.extend(kept_inputs)

    rename: dict[str, str] = {}
    dead: set[str] = set()  # output names of removed Transposes (protobuf wrappers have no stable id)
    added: list[onnx.NodeProto] = []
    for gname, sname, transposed in frozen:
        readers = [n for n in graph.node if gname in n.input]
        if not transposed:
            rename[gname] = sname
            continue
        needs_plain = False
        for node in readers:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if node.op_type == "Transpose" and perm == [1, 0]:
                rename[node.output[0]] = sname
                dead.add(node.output[0])
            else:
                needs_plain = True
        if needs_plain:
            added.append(
                helper.make_node("Transpose", [sname], [gname], perm=[1, 0], name=f"{gname}/untranspose")
            )
    nodes = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in dead)]
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(added + nodes)
    for out in graph.output:
        if out.name in rename:  # never expected: a frozen tensor is not a graph output
            raise ValueError(f"graph output {out.name} is a frozen backbone tensor")

    if rewrite is not None:
        rewrite(model)
    read = {name for node in graph.node for name in node.input}
    own = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for sname in sorted((read & tensors.keys()) - own):
        spec = tensors[sname]
        init = TensorProto(name=sname, data_type=TENSOR_TYPES[spec.dtype], dims=list(spec.shape))
        init.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", location),
            ("offset", str(spec.offset)),
            ("length", str(spec.length)),
        ):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        graph.initializer.append(init)
    onnx.save(model, str(graph_path))


def relative_backbone_location(task_dir_depth: int = 2) -> str:
    """Path of backbone.bin as a task graph sees it (graphs live in tasks/<task_id>/)."""
    return "../" * task_dir_depth + BACKBONE_FILE
