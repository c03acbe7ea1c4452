"""Rewrites of the joint forward/backward graph (core ATen, before `to_edge`) that send its heavy work to
the fast kernels of ExecuTorch's wheel, with the same values.

Measured on the default case (MiniLM + lora r=8, batch 8, seq 32) with ETDump (benchmarks/README.md,
"ExecuTorch beside ORT"): after the addmm rewrite, `mm` took 55% of the step and `permute_copy` 27%.
The joint graph writes every linear as `mm(x, permute(W))`, and its backward as
`mm(dY, permute(permute(W)))`: two full copies of each frozen weight matrix per step, through the
portable `permute_copy` (an element-by-element index loop). The wheel registers the optimized
`aten::linear.out`, which reads `W` as it is stored; a permute of a permute that restores the order is
no copy at all.
"""

from __future__ import annotations

from typing import cast

import torch

ADDMM = torch.ops.aten.addmm.default
MM = torch.ops.aten.mm.default
ADD = torch.ops.aten.add.Tensor
LINEAR = torch.ops.aten.linear.default
PERMUTE = torch.ops.aten.permute.default

# the ops `to_edge` must keep as they are (`EdgeCompileConfig.preserve_ops`): linear is not core ATen
PRESERVED_OPS = (LINEAR,)


def _call(node: object, target: object) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is target


def _unit_scales(node: torch.fx.Node) -> bool:
    return all(node.kwargs.get(k, 1) == 1 for k in ("beta", "alpha"))


def _dims(node: torch.fx.Node) -> list[int]:
    """The dimensions of a `permute`, made non-negative."""
    dims = [int(d) for d in cast("list[int]", node.args[1])]
    return [d % len(dims) for d in dims]


def _transposed(node: object) -> torch.fx.Node | None:
    """`W` when `node` is `permute(W, [1, 0])` of a 2-D `W`, else None."""
    if not isinstance(node, torch.fx.Node) or not _call(node, PERMUTE) or _dims(node) != [1, 0]:
        return None
    source = node.args[0]
    return source if isinstance(source, torch.fx.Node) else None


def _replace(graph: torch.fx.Graph, node: torch.fx.Node, target: object, args: tuple[object, ...]) -> None:
    with graph.inserting_before(node):
        new = graph.call_function(target, args)  # type: ignore[arg-type]
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _erase_if_unused(graph: torch.fx.Graph, node: object) -> None:
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and not node.users:
        graph.erase_node(node)


def rewrite_linears(graph_module: torch.fx.GraphModule) -> int:
    """`mm(x, permute(W))` → `linear(x, W)` and `addmm(b, x, permute(W))` → `linear(x, W, b)`;
    returns how many. The permute, left without users, goes."""
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if _call(node, MM):
            a, b, bias = node.args[0], node.args[1], None
        elif _call(node, ADDMM) and _unit_scales(node):
            bias, a, b = node.args[:3]
            if len(getattr(getattr(bias, "meta", {}).get("val"), "shape", ())) != 1:
                continue  # linear's bias is one row; a broadcast matrix stays an addmm
        else:
            continue
        weight = _transposed(b)
        if weight is None:
            continue
        _replace(graph, node, LINEAR, (a, weight) if bias is None else (a, weight, bias))
        _erase_if_unused(graph, b)
        count += 1
    graph.lint()
    graph_module.recompile()
    return count


def fold_permute_pairs(graph_module: torch.fx.GraphModule) -> int:
    """`permute(permute(x, p), q)` whose dimensions come back in order → `x`; returns how many.
    A pair whose `x` is a graph input and whose result is a graph output is kept: an output must not
    alias an input."""
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        inner = node.args[0] if _call(node, PERMUTE) else None
        if not isinstance(inner, torch.fx.Node) or not _call(inner, PERMUTE):
            continue
        source = inner.args[0]
        p, q = _dims(inner), _dims(node)
        if [p[i] for i in q] != list(range(len(q))) or not isinstance(source, torch.fx.Node):
            continue
        if source.op == "placeholder" and any(u.op == "output" for u in node.users):
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        _erase_if_unused(graph, inner)
        count += 1
    graph.lint()
    graph_module.recompile()
    return count


def rewrite_addmm(graph_module: torch.fx.GraphModule) -> int:
    """Every remaining `aten.addmm(bias, a, b)` → `aten.add(aten.mm(a, b), bias)`; returns how many.

    Measured (DESIGN.md): ExecuTorch's portable addmm runs at 1.7 GFLOP/s, its mm at 44.
    """
    count = 0
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _call(node, ADDMM) or not _unit_scales(node):
            continue  # a scaled addmm is not a linear: leave it to the portable kernel
        bias, a, b = node.args[:3]
        with graph.inserting_before(node):
            mm = graph.call_function(MM, (a, b))
            mm.meta = dict(node.meta)
        _replace(graph, node, ADD, (mm, bias))
        count += 1
    graph.lint()
    graph_module.recompile()
    return count


def speed_rewrites(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """All of the above, in the order that lets each see the others' result: how many of each."""
    return {
        "permute pairs folded": fold_permute_pairs(graph_module),
        "linears": rewrite_linears(graph_module),
        "addmm -> mm + add": rewrite_addmm(graph_module),
    }
