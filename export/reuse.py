"""A bundle for a run that may be repeated (the demo, `simulate`): exported once, then reused while the
recipe it was made from is unchanged. The recipe is written beside the bundle, as `<bundle>.recipe.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class BundleRecipe:
    """Everything the exported bundle depends on; an existing bundle with the same recipe is reused."""

    backbone: str
    module: str
    max_length: int
    seed: int
    tasks: dict[str, list[str]]  # task id -> labels


def ensure_bundle(
    out: Path,
    tasks: Mapping[str, Sequence[str]],
    backbone: str,
    module: str,
    max_length: int,
    seed: int,
    on_export: Callable[[int, str], None] | None = None,
) -> tuple[Bundle, bool]:
    """The bundle at `out` for `tasks` (task id -> labels): exported (backbone once, one module per task)
    unless a bundle made from the same recipe is already there. Returns the opened bundle and whether it
    was exported."""
    recipe = BundleRecipe(
        backbone, module, max_length, seed, {t: list(labels) for t, labels in tasks.items()}
    )
    recipe_path = out.parent / f"{out.name}.{RECIPE_FILE}"
    if (out / MANIFEST_NAME).is_file() and recipe_path.is_file():
        try:
            same = json.loads(recipe_path.read_text()) == asdict(recipe)
            if same:
                return open_bundle(out), False  # verifies every hash: a damaged bundle is exported again
        except (FedyoloError, ValueError) as e:
            log.warning("bundle %s is unusable (%s); exporting it again", out, e)
    # A load report and a weights bar per task are noise here; transformers reads these at its import.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from fedyolo.export.pipeline import export_onnx  # torch: only when an export is needed

    recipe_path.unlink(missing_ok=True)
    if out.exists():
        if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
            raise FedyoloError(f"{out} exists and is not a bundle; give another --out")
        shutil.rmtree(out)  # a bundle of another recipe: its backbone or labels differ
    for i, (task_id, labels) in enumerate(tasks.items()):
        export_onnx(
            out,
            task_id,
            labels,
            backbone=backbone,
            module=module,
            max_length=max_length,
            seed=seed,
            force=True,
            show_progress=True,
        )
        if on_export is not None:
            on_export(i, task_id)
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1))
    return open_bundle(out), True
