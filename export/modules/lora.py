"""`lora`: low-rank adapters on chosen projections, injected with PEFT."""

from __future__ import annotations

from dataclasses import dataclass

from fedyolo.export.classifier import TaskModel, transformer_layers
from fedyolo.export.modules.registry import ModuleKind, freeze_backbone, register
from fedyolo.runtime.errors import FedyoloError


@dataclass(frozen=True)
class LoraConfig:
    """r: rank; alpha: scaling numerator (scale = alpha / r); targets: projection roles
    (q, k, v, o, ffn_in, ffn_out), found from the model rather than from layer names."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q", "v")


def lora_target_names(model: TaskModel, targets: tuple[str, ...]) -> list[str]:
    """Full module names of the target projections, relative to `model`."""
    hidden = model.head.in_features
    layers = transformer_layers(model, hidden)
    bad = sorted(set(targets) - set(layers[0]))
    if bad:
        raise FedyoloError(f"unknown LoRA target roles {bad}; choose from {sorted(layers[0])}")
    return [layer[t] for layer in layers for t in targets]


def attach_lora(model: TaskModel, config: LoraConfig) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    freeze_backbone(model)
    names = lora_target_names(model, tuple(config.targets))
    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=names)
    inject_adapter_in_model(peft_config, model)  # marks everything but the LoRA tensors frozen
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or n.startswith("head."))


register(ModuleKind("lora", LoraConfig, attach_lora, "LoRA on attention projections (PEFT) + head"))
