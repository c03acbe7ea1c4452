"""`head`: train the classifier head only — the linear probe."""

from __future__ import annotations

from dataclasses import dataclass

from fedyolo.export.classifier import TaskModel
from fedyolo.export.modules.registry import ModuleKind, freeze_backbone, register


@dataclass(frozen=True)
class HeadConfig:
    """No options: the head is a linear layer over pooled features."""


def attach_head(model: TaskModel, config: HeadConfig) -> None:
    freeze_backbone(model)


register(ModuleKind("head", HeadConfig, attach_head, "classifier head only (linear probe)"))
