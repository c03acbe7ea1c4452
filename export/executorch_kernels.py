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

_lib = torch.library.Library("fedyolo", "DEF")  # lives as long as the process
_lib.define("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor")
_lib.define("linear.out(Tensor input, Tensor weight, Tensor? bias=None, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define("mm(Tensor self, Tensor mat2) -> Tensor")
_lib.define("mm.out(Tensor self, Tensor mat2, *, Tensor(a!) out) -> Tensor(a!)")


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


for _key in ("CompositeExplicitAutograd",):
    _lib.impl("linear", _linear, _key)
    _lib.impl("linear.out", _linear_out, _key)
    _lib.impl("mm", _mm, _key)
    _lib.impl("mm.out", _mm_out, _key)
_lib.impl("linear", _linear, "Meta")
_lib.impl("mm", _mm, "Meta")

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
