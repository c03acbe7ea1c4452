"""The speed rewrites of the joint forward/backward graph: each frozen weight is read as stored (no
permute copies left on it), and the graph computes the same loss and gradients as before."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("executorch", reason="the 'executorch' extra is not installed (make setup installs it)")

from fedyolo.export.executorch_rewrites import PERMUTE, speed_rewrites


class TwoLayers(nn.Module):
    """A frozen linear, GELU, a trainable linear; cross-entropy first among the outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.frozen = nn.Linear(16, 32).requires_grad_(False)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(nn.functional.gelu(self.frozen(x)))
        return nn.functional.cross_entropy(logits, labels), logits.detach()


def joint_graph() -> tuple[torch.export.ExportedProgram, tuple[torch.Tensor, ...]]:
    from torch.export.experimental import _export_forward_backward

    inputs = (torch.randn(4, 16), torch.tensor([0, 1, 2, 1]))
    return _export_forward_backward(torch.export.export(TwoLayers(), inputs, strict=False)), inputs


def permutes_of_parameters(ep: torch.export.ExportedProgram) -> int:
    return sum(
        1
        for n in ep.graph_module.graph.nodes
        if n.op == "call_function" and n.target is PERMUTE and n.args[0].op == "placeholder"
    )


def run_joint(ep: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The joint graph's flat outputs (loss, logits, gradients): its parameters, then the inputs."""
    user = iter(inputs)
    args = [
        ep.state_dict[s.target] if s.kind.name == "PARAMETER" else next(user)
        for s in ep.graph_signature.input_specs
    ]
    return list(ep.graph_module(*args))


def test_rewrites_leave_no_weight_copies_and_the_same_loss_and_gradients() -> None:
    # Arrange
    joint, inputs = joint_graph()
    before = copy.deepcopy(joint)

    # Act
    counts = speed_rewrites(joint.graph_module)

    # Assert: both linears read their weight as stored; the backward's permute pair is gone
    assert counts["linears"] == 2 and counts["permute pairs folded"] >= 1, counts
    assert permutes_of_parameters(before) >= 2 and permutes_of_parameters(joint) == 0
    want, got = run_joint(before, inputs), run_joint(joint, inputs)
    assert len(got) == len(want)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
