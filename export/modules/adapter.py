"""`adapter`: Houlsby-style bottleneck adapters after each attention output and each feed-forward output.

h = W x + b                    the frozen projection          [batch, seq, hidden]
h = h + up(relu(down(h)))      the adapter, identity at init  [batch, seq, hidden]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedyolo.export.classifier import TaskModel, transformer_layers
from fedyolo.export.modules.registry import ModuleKind, freeze_backbone, register
from fedyolo.runtime.errors import FedyoloError


@dataclass(frozen=True)
class AdapterConfig:
    """bottleneck: adapter width; positions: roles whose output is adapted (o: attention, ffn_out)."""

    bottleneck: int = 64
    positions: tuple[str, ...] = ("o", "ffn_out")


class BottleneckAdapter(nn.Module):
    """down-project, ReLU, up-project, add back; `up` starts at zero so the model starts unchanged."""

    def __init__(self, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = h + self.up(torch.relu(self.down(h)))  # [batch, seq, hidden]
        return out


class AdaptedLinear(nn.Module):
    """A frozen linear followed by its adapter."""

    def __init__(self, linear: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.linear = linear
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.adapter(self.linear(x))
        return out


def attach_adapter(model: TaskModel, config: AdapterConfig) -> None:
    freeze_backbone(model)
    hidden = model.head.in_features
    for layer in transformer_layers(model, hidden):
        for role in config.positions:
            if role not in layer:
                raise FedyoloError(f"unknown adapter position {role!r}; choose from {sorted(layer)}")
            parent_name, _, child = layer[role].rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, child)
            setattr(
                parent,
                child,
                AdaptedLinear(linear, BottleneckAdapter(linear.out_features, config.bottleneck)),
            )


register(ModuleKind("adapter", AdapterConfig, attach_adapter, "bottleneck adapters (Houlsby) + head"))
