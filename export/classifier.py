"""The task model: frozen backbone → (optional prompt) → pooled features → linear head → logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedyolo.export.backbones import Backbone
from fedyolo.runtime.errors import FedyoloError


class TaskModel(nn.Module):
    """A classifier over a backbone. Text: mean pooling over real tokens (as sentence-transformers
    pools MiniLM). Images: the [CLS] token. A prompt module sets `self.prompt` [n_virtual, hidden]."""

    def __init__(self, backbone: Backbone, num_labels: int) -> None:
        super().__init__()
        self.architecture = backbone.architecture
        self.backbone: Any = backbone.model  # a transformers model: its call signature is per architecture
        self.head = nn.Linear(backbone.hidden_size, num_labels)
        self.prompt: nn.Parameter | None = None
        # Sentence-transformers models (MiniLM) define their embedding as mean pooling + L2 normalisation;
        # the head reads that embedding, scaled by sqrt(hidden) so each feature has unit RMS.
        self.normalize = backbone.normalize_embeddings
        self.feature_scale = float(backbone.hidden_size) ** 0.5
        # ORT 1.19's GatherGrad mis-reads a [1, seq] position gather broadcast over the batch, which
        # corrupts embedding gradients when the backbone trains (`full`). Positions given per example
        # ([batch, seq]) avoid the broadcast; only for backbones whose positions are 0..seq-1.
        self.explicit_positions = backbone.model_type in {"bert", "electra"}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.architecture == "text":
            return self._text(inputs[0], inputs[1])
        return self._image(inputs[0])

    def _text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: [batch, seq] int64
        mask = attention_mask
        if self.prompt is None:
            positions = None
            if self.explicit_positions:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=mask, position_ids=positions
            ).last_hidden_state
        else:
            embeds = self.backbone.get_input_embeddings()(input_ids)  # [batch, seq, hidden]
            prompt = self.prompt.unsqueeze(0).expand(input_ids.shape[0], -1, -1)  # [batch, n, hidden]
            embeds = torch.cat([prompt, embeds], dim=1)  # [batch, n + seq, hidden]
            mask = torch.cat([torch.ones_like(mask[:, : prompt.shape[1]]), mask], dim=1)
            hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq', 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # [batch, hidden]
        if self.normalize:  # the backbone's own sentence embedding, rescaled to unit RMS per feature
            pooled = self.feature_scale * nn.functional.normalize(pooled, dim=-1)
        logits: torch.Tensor = self.head(pooled)  # [batch, labels]
        return logits

    def _image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [batch, C, H, W]
        if self.prompt is None:
            hidden = self.backbone(pixel_values=pixel_values).last_hidden_state
        else:
            emb = self.backbone.embeddings(pixel_values)  # [batch, 1 + patches, hidden]
            prompt = self.prompt.unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = torch.cat([emb[:, :1], prompt, emb[:, 1:]], dim=1)  # [batch, 1 + n + patches, hidden]
            layers = getattr(self.backbone, "layers", None) or self.backbone.encoder.layer
            for layer in layers:  # ViTModel's own loop, with the prompt inside the sequence
                emb = layer(emb)
            hidden = self.backbone.layernorm(emb)
        logits: torch.Tensor = self.head(hidden[:, 0])  # [batch, labels]
        return logits


def transformer_layers(model: nn.Module, hidden_size: int) -> list[dict[str, str]]:
    """Per transformer layer, the full names of its linear projections by role, found from the model.

    Roles: q, k, v, o (attention output), ffn_in, ffn_out. Found by shape and registration order, which
    every BERT/RoBERTa/DistilBERT/ViT layer shares: three hidden→hidden projections (q, k, v), then the
    attention output, then hidden→intermediate and intermediate→hidden. Never from a list of names.
    """
    layers: list[dict[str, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        for i, layer in enumerate(module):
            square: list[str] = []
            roles: dict[str, str] = {}
            for sub, lin in layer.named_modules():
                if not isinstance(lin, nn.Linear):
                    continue
                full = f"{name}.{i}.{sub}"
                if lin.in_features == hidden_size and lin.out_features == hidden_size:
                    square.append(full)
                elif lin.in_features == hidden_size and "ffn_in" not in roles:
                    roles["ffn_in"] = full
                elif lin.out_features == hidden_size and "ffn_out" not in roles:
                    roles["ffn_out"] = full
            if len(square) == 4 and "ffn_in" in roles and "ffn_out" in roles:
                roles.update(q=square[0], k=square[1], v=square[2], o=square[3])
                layers.append(roles)
        if layers:
            return layers
    raise FedyoloError(
        "could not find transformer layers (q, k, v, output, feed-forward linears) in the backbone; "
        "supported are BERT-, RoBERTa-, DistilBERT- and ViT-style encoders"
    )
