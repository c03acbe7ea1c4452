"""Module kinds, registered by name, each with one config dataclass (as PEFT registers its methods)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedyolo.export.classifier import TaskModel
from fedyolo.runtime.errors import FedyoloError


@dataclass(frozen=True)
class ModuleKind:
    """A way to make a small trainable module over the frozen backbone."""

    name: str
    config_cls: type[Any]
    attach: Callable[[TaskModel, Any], None]  # freezes the backbone, adds the module, sets requires_grad
    description: str


MODULE_KINDS: dict[str, ModuleKind] = {}


def register(kind: ModuleKind) -> ModuleKind:
    MODULE_KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModuleKind:
    """The registered kind `name`, or an error listing the kinds there are."""
    from fedyolo.export.modules import adapter, full, head, lora, prompt  # noqa: F401  (registration)

    if name not in MODULE_KINDS:
        raise FedyoloError(f"unknown module kind {name!r}; choose one of: {', '.join(sorted(MODULE_KINDS))}")
    return MODULE_KINDS[name]


def make_config(kind: ModuleKind, overrides: dict[str, Any] | None = None) -> Any:
    """The kind's config with `overrides` applied; unknown keys are a clear error."""
    fields = {f.name: f for f in dataclasses.fields(kind.config_cls)}
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise FedyoloError(
            f"module {kind.name!r} has no option {unknown}; its options: {', '.join(sorted(fields)) or 'none'}"
        )
    return kind.config_cls(**overrides)


def freeze_backbone(model: TaskModel) -> None:
    """Every backbone weight frozen; the head always trains (every kind includes the task head)."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
