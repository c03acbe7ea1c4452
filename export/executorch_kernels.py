"""The `fedyolo::linear` / `fedyolo::mm` operators for ExecuTorch programs, and the rewrite that puts
them in place of the joint graph's `aten.linear` / `aten.mm`.

At export they are ordinary torch operators (`torch.library`, computed by ATen, so the exported graph
has the same values); in the program they name the out variants that the runtime's kernel library
(`runtime/native/fedyolo_et_kernels.cpp`, `fedyolo.runtime.et_kernels`) registers into ExecuTorch: a
BLAS sgemm on every core instead of ExecuTorch's one-core GEMM. A program that uses them runs only
where that library is loaded (the runtime says how to build it), hence an export option.
"""

from __future__ import annotations

import torch

from fedyolo.export.executorch_rewrites import LINEAR, MM, _call


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return torch.nn.functional.linear(x, w, b)


def _linear_out(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, out: torch.Tensor
) -> torch.Tensor:
    return out.copy_(torch.nn.functional.linear(x, w, b))


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b)


def _mm_out(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(torch.mm(a, b))


_lib = torch.library.Library("fedyolo", "DEF")  # type: ignore[no-untyped-call]  # lives with the process
for _schema, _fn in (
    ("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor", _linear),
    (
        "linear.out(Tensor input, Tensor weight, Tensor? bias=None, *, Tensor(a!) out) -> Tensor(a!)",
        _linear_out,
    ),
    ("mm(Tensor self, Tensor mat2) -> Tensor", _mm),
    ("mm.out(Tensor self, Tensor mat2, *, Tensor(a!) out) -> Tensor(a!)", _mm_out),
):
    _lib.define(_schema)  # type: ignore[no-untyped-call]
    _name = _schema.split("(")[0]
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
    if not _name.endswith(".out"):
        _lib.impl(_name, _fn, "Meta")  # type: ignore[no-untyped-call]

FEDYOLO_LINEAR = torch.ops.fedyolo.linear.default
FEDYOLO_MM = torch.ops.fedyolo.mm.default


def use_fedyolo_kernels(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """Every fp32 `aten.linear` → `fedyolo.linear`, every fp32 `aten.mm` → `fedyolo.mm` (same arguments);
    returns how many of each."""
    counts = {"fedyolo.linear": 0, "fedyolo.mm": 0}
    for node in graph_module.graph.nodes:
        val = node.meta.get("val")
        if getattr(val, "dtype", None) != torch.float32:
            continue
        if _call(node, LINEAR):
            node.target, key = FEDYOLO_LINEAR, "fedyolo.linear"
        elif _call(node, MM):
            node.target, key = FEDYOLO_MM, "fedyolo.mm"
        else:
            continue
        counts[key] += 1
    graph_module.graph.lint()
    graph_module.recompile()
    return counts
