"""The task model → one ExecuTorch training program (`.pte`) whose frozen backbone tensors live in the
bundle's one shared `backbone/backbone.ptd`.

Steps (DESIGN.md, ExecuTorch): `torch.export.export` of the model with its loss (loss first among the
outputs) → `_export_forward_backward` (the joint graph: outputs, gradients, parameters) → every
linear rewritten onto the wheel's fast kernels (`executorch_rewrites`: `linear` reading each weight as
stored, no permute copies, no portable `addmm`) →
frozen parameters renamed to the backbone's own names → `to_edge` → `to_executorch` with those
parameters tagged as external constants. Trainable tensors stay inside the program, where the runtime
updates them in place.

The batch is fixed at export (`batch`): ExecuTorch plans its memory for one shape. The runtime pads a
smaller batch with rows labelled -100, which the loss ignores, and cuts a larger one into pieces. The
sequence length of text is dynamic up to the task's `max_length` (memory planned for the longest), so
the runtime runs a batch at the length of its longest text, as the ONNX path does (`bucketing`); the
shortest length a program takes is what torch.export proves the model allows (a prompt module needs
more than two tokens), recorded in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedyolo.export.backbone_store import BackboneLayout
from fedyolo.export.classifier import TaskModel
from fedyolo.export.executorch_rewrites import PRESERVED_OPS, speed_rewrites
from fedyolo.export.onnx_export import ExportMismatchError, dummy_inputs, native_logs_quiet
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.executorch_files import BACKBONE_DATA_KEY, IGNORE_LABEL

log = logging.getLogger(__name__)
# whose kernels run the program's GEMMs: ExecuTorch's own (loads on any ExecuTorch runtime), or fedyolo's
# kernel library (a BLAS on every core; the runtime must load runtime/native's library first)
KERNELS = ("executorch", "fedyolo")


class WithLoss(nn.Module):
    """(loss, logits): the loss first, as ExecuTorch's training API requires. Rows labelled -100 (the
    runtime's padding) are ignored, so a padded batch has the loss and gradients of the real rows."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *features, labels = inputs
        logits = self.model(*features)
        loss = nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)
        return loss, logits.detach()


@dataclass(frozen=True)
class ExecutorchArtifacts:
    """One task's program, and the backbone tensors it reads from the shared data file."""

    program: bytes  # the .pte
    batch: int  # the examples per call the program is planned for
    data: bytes  # the .ptd this export wrote: the frozen tensors under the backbone's own names
    input_names: tuple[str, ...]
    trainable: dict[str, tuple[int, ...]]  # name -> shape, in PyTorch order
    ops: dict[str, int]  # edge operator -> count in the joint graph (for the README and the benchmark)
    min_length: int = 0  # the shortest text the program takes; 0: its lengths are fixed (images, or static)


def _rename_frozen(ep: Any, canonical: dict[str, str]) -> Any:
    """The exported program with each frozen parameter renamed `graph name -> canonical name`: its key
    in the shared data file is then the same for every module kind (PEFT renames the layers it wraps)."""
    from torch.export import ExportedProgram
    from torch.export.graph_signature import InputKind

    specs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.PARAMETER and spec.target in canonical:
            spec = type(spec)(spec.kind, spec.arg, canonical[spec.target], spec.persistent)
        specs.append(spec)
    signature = type(ep.graph_signature)(specs, list(ep.graph_signature.output_specs))
    state = {canonical.get(k, k): v for k, v in ep.state_dict.items()}
    return ExportedProgram(
        root=ep.graph_module,
        graph=ep.graph_module.graph,
        graph_signature=signature,
        state_dict=state,
        range_constraints=ep.range_constraints,
        module_call_graph=ep.module_call_graph,
        constants=ep.constants,
        verifiers=ep.verifiers,
    )


def check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise FedyoloError(
            f"--kernels {kernels!r} is not one of {', '.join(KERNELS)}; e.g. --kernels fedyolo"
        )


def _op_counts(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_function":
            name = str(getattr(node.target, "__name__", node.target))
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _dynamic_length(args: tuple[torch.Tensor, ...], max_length: int) -> tuple[Any, ...] | None:
    """torch.export's `dynamic_shapes` for `WithLoss(*args)`: the sequence axis of every text input
    may run from 2 (1 would specialise) to `max_length`; torch narrows the range if the model needs."""
    from torch.export import Dim

    if max_length <= 2 or not any(a.ndim == 2 and a.shape[1] == max_length for a in args[:-1]):
        return None
    seq = Dim.AUTO(min=2, max=max_length)
    features = ({1: seq} if a.ndim == 2 and a.shape[1] == max_length else None for a in args[:-1])
    return ((*features, None),)  # one entry: WithLoss takes its inputs as *args


def _min_length(ep: Any, max_length: int) -> int:
    """The shortest sequence the exported program takes (0 when its length is fixed), from the range
    torch.export derived for the first input's sequence axis."""
    first = next(
        n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs
    )
    size = first.meta["val"].shape[1] if first.meta["val"].ndim == 2 else max_length
    if isinstance(size, int):
        return 0
    bounds = ep.range_constraints[size.node.expr]
    if int(bounds.upper) < max_length:
        raise ExportMismatchError(
            f"the ExecuTorch program takes at most {int(bounds.upper)} tokens, not the task's {max_length}"
        )
    return int(bounds.lower)


def export_program(
    model: TaskModel,
    layout: BackboneLayout,
    module_kind: str,
    batch: int,
    max_length: int,
    image_shape: tuple[int, ...] = (),
    rewrite: bool = True,
    kernels: str = "fedyolo",
) -> ExecutorchArtifacts:
    """The joint forward/backward program of `model` for `batch` examples, its frozen backbone tensors
    tagged into the data file `backbone` under the backbone's own parameter names. `kernels="fedyolo"`
    (the default) runs its GEMMs, permutes and GELU on fedyolo's kernel library (`executorch_kernels`),
    which fedyolo's runtime builds beside its runner; `kernels="executorch"` keeps ExecuTorch's own, for
    stock ExecuTorch runtimes (the Android AAR), 2-3x slower."""
    check_kernels(kernels)
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from torch.export.experimental import _export_forward_backward

    inputs, names, _ = dummy_inputs(model, batch, max_length, image_shape)
    labels = torch.zeros(batch, dtype=torch.int64)
    model.eval()  # every dropout off; the export's gradients are those of the deterministic model
    params = dict(model.named_parameters())
    trainable = {n: tuple(p.shape) for n, p in params.items() if p.requires_grad}
    canonical = {
        n: layout.canonical[id(p)]
        for n, p in params.items()
        if not p.requires_grad and id(p) in layout.canonical
    }
    with native_logs_quiet():
        try:
            args = (*inputs, labels)
            ep = torch.export.export(
                WithLoss(model), args, dynamic_shapes=_dynamic_length(args, max_length), strict=False
            )
            min_length = _min_length(ep, max_length)
            joint = _export_forward_backward(ep)
        except Exception as e:  # torch raises many types for an operator without a backward
            raise FedyoloError(
                f"ExecuTorch cannot build the training graph of module kind {module_kind!r}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; export this kind with "
                "`fedyolo export onnx` instead"
            ) from e
        rewritten = speed_rewrites(joint.graph_module) if rewrite else {}
        if kernels == "fedyolo":
            from fedyolo.export.executorch_kernels import use_fedyolo_kernels

            rewritten.update(use_fedyolo_kernels(joint.graph_module))
        joint = _rename_frozen(joint, {f"model.{n}": c for n, c in canonical.items()})
        grads = {
            s.target.removeprefix("model.")
            for s in joint.graph_signature.output_specs
            if s.kind.name == "GRADIENT_TO_PARAMETER"
        }
        if grads != set(trainable):
            raise ExportMismatchError(
                f"the ExecuTorch program trains {sorted(grads - set(trainable))[:5]} and misses "
                f"{sorted(set(trainable) - grads)[:5]} of PyTorch's trainable tensors"
            )
        frozen_keys = set(canonical.values())

        edge = to_edge(joint, compile_config=EdgeCompileConfig(preserve_ops=list(PRESERVED_OPS)))
        external = {
            spec.arg.name
            for spec in edge.exported_program().graph_signature.input_specs
            if spec.target in frozen_keys
        }

        def tag(node: torch.fx.Node) -> str | None:
            return BACKBONE_DATA_KEY if node.name in external else None

        ops = _op_counts(edge.exported_program().graph_module)
        program = edge.to_executorch(ExecutorchBackendConfig(external_constants=tag))
        data = program._tensor_data.get(BACKBONE_DATA_KEY) if program._tensor_data else None
    log.info("ExecuTorch program: rewrites %s, %.1f MB", rewritten, len(program.buffer) / 1e6)
    return ExecutorchArtifacts(
        program=bytes(program.buffer),
        batch=batch,
        data=bytes(data) if data is not None else b"",
        input_names=(*names, "labels"),
        trainable={n: trainable[n] for n in trainable},
        ops=ops,
        min_length=min_length,
    )
