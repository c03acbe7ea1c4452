"""`full`: full fine-tuning of backbone and head — the baseline the paper compares modules against."""

from __future__ import annotations

from dataclasses import dataclass

from fedyolo.export.classifier import TaskModel
from fedyolo.export.modules.registry import ModuleKind, register


@dataclass(frozen=True)
class FullConfig:
    """No options: every weight trains, and every weight travels."""


def attach_full(model: TaskModel, config: FullConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


register(ModuleKind("full", FullConfig, attach_full, "full fine-tuning (baseline; sends the whole model)"))
