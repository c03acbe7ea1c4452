"""The `fedyolo::linear`, `mm`, `permute`, `erf` and `gelu` operators for ExecuTorch programs, and the
rewrite that puts them in place of the joint graph's ATen namesakes.

At export they are ordinary torch operators (`torch.library`, computed by ATen, so the exported graph
has the same values); in the program they name the out variants that the runtime's kernel library
(`runtime/native/fedyolo_et_kernels.cpp`, `fedyolo.runtime.et_kernels`) registers into ExecuTorch: a
BLAS sgemm on every core instead of ExecuTorch's one-core GEMM. A program that uses them runs only
where that library is loaded (the runtime says how to build it), hence an export option.
"""

from __future__ import annotations

import torch

from fedyolo.export.executorch_rewrites import LINEAR, MM, PERMUTE


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


def _erf(x: torch.Tensor) -> torch.Tensor:
    return torch.erf(x)


def _erf_out(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(torch.erf(x))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def _gelu_out(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(torch.nn.functional.gelu(x))


def _permute(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    return x.permute(dims).clone(memory_format=torch.contiguous_format)  # a copy, never a view


def _permute_out(x: torch.Tensor, dims: list[int], *, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(x.permute(dims))


_lib = torch.library.Library("fedyolo", "DEF")  # type: ignore[no-untyped-call]  # lives with the process
for _schema, _fn in (
    ("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor", _linear),
    (
        "linear.out(Tensor input, Tensor weight, Tensor? bias=None, *, Tensor(a!) out) -> Tensor(a!)",
        _linear_out,
    ),
    ("mm(Tensor self, Tensor mat2) -> Tensor", _mm),
    ("mm.out(Tensor self, Tensor mat2, *, Tensor(a!) out) -> Tensor(a!)", _mm_out),
    ("permute(Tensor self, int[] dims) -> Tensor", _permute),
    ("permute.out(Tensor self, int[] dims, *, Tensor(a!) out) -> Tensor(a!)", _permute_out),
    ("erf(Tensor self) -> Tensor", _erf),
    ("erf.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)", _erf_out),
    ("gelu(Tensor self) -> Tensor", _gelu),  # the erf GELU (approximate="none") only
    ("gelu.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)", _gelu_out),
):
    _lib.define(_schema)  # type: ignore[no-untyped-call]
    _name = _schema.split("(")[0]
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
    if not _name.endswith(".out"):
        _lib.impl(_name, _fn, "Meta")  # type: ignore[no-untyped-call]

FEDYOLO_LINEAR = torch.ops.fedyolo.linear.default
FEDYOLO_MM = torch.ops.fedyolo.mm.default
FEDYOLO_PERMUTE = torch.ops.fedyolo.permute.default
ERF, GELU = torch.ops.aten.erf.default, torch.ops.aten.gelu.default


def use_fedyolo_kernels(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """Every fp32 `aten.linear` / `aten.mm` / `aten.erf` / erf `aten.gelu` → its `fedyolo` namesake,
    every `aten.permute` → `fedyolo.permute` (a copy, as `to_edge`'s `permute_copy` is); how many of each."""
    swaps = {
        LINEAR: FEDYOLO_LINEAR,
        MM: FEDYOLO_MM,
        PERMUTE: FEDYOLO_PERMUTE,
        ERF: torch.ops.fedyolo.erf.default,
        GELU: torch.ops.fedyolo.gelu.default,
    }
    counts = {f"fedyolo.{new.__name__.split('.')[0]}": 0 for new in swaps.values()}
    for node in graph_module.graph.nodes:
        new = swaps.get(node.target) if node.op == "call_function" else None
        fp32 = getattr(node.meta.get("val"), "dtype", None) == torch.float32
        if new is None or (new is not FEDYOLO_PERMUTE and not fp32):
            continue
        if node.target is GELU and (len(node.args) > 1 or node.kwargs.get("approximate", "none") != "none"):
            continue  # the tanh GELU stays ExecuTorch's
        node.target = new
        counts[f"fedyolo.{new.__name__.split('.')[0]}"] += 1
    graph_module.graph.lint()
    graph_module.recompile()
    return counts
