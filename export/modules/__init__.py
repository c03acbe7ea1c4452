"""Module kinds: lora, adapter, prompt, head, full — each a config dataclass registered by name."""

from fedyolo.export.modules.registry import MODULE_KINDS, ModuleKind, get_kind, make_config

__all__ = ["MODULE_KINDS", "ModuleKind", "get_kind", "make_config"]
