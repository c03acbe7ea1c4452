"""`prompt`: prompt tuning — learned virtual tokens prepended to the input embeddings (as PEFT's
prompt tuning does for text; after [CLS] for ViT, as visual prompt tuning does)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedyolo.export.classifier import TaskModel
from fedyolo.export.modules.registry import ModuleKind, freeze_backbone, register


@dataclass(frozen=True)
class PromptConfig:
    """num_virtual_tokens: prompt length; init from random vocabulary embeddings for text."""

    num_virtual_tokens: int = 10
    seed: int = 0


def attach_prompt(model: TaskModel, config: PromptConfig) -> None:
    freeze_backbone(model)
    hidden = model.head.in_features
    gen = torch.Generator().manual_seed(config.seed)
    if model.architecture == "text":
        table = model.backbone.get_input_embeddings().weight  # [vocab, hidden]
        rows = torch.randint(1000, table.shape[0], (config.num_virtual_tokens,), generator=gen)
        init = table[rows].detach().clone()
    else:
        init = torch.randn(config.num_virtual_tokens, hidden, generator=gen) * 0.02
    model.prompt = nn.Parameter(init)  # [n_virtual, hidden]


register(ModuleKind("prompt", PromptConfig, attach_prompt, "prompt tuning: learned virtual tokens + head"))
