"""Length bucketing: a batch padded to the task's length runs at the length of its longest text.

The graphs take any sequence length up to the backbone's positions, and padding changes no output: a
padded key gets zero attention (its additive mask underflows exp to 0) and pooling skips it. So the
columns that are padding in every row of a batch are dropped before the step: real `topics` batches
of 8 hold 9-20 tokens of the 32 they are padded to.
"""

from __future__ import annotations

import numpy as np

from fedyolo.runtime.trainer import Batch


def trim_padding(batch: Batch, min_length: int = 2) -> Batch:
    """`batch` with its trailing all-padding columns dropped (text with an attention mask; else as is),
    keeping at least `min_length` columns (an ExecuTorch program may take no fewer)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2 or mask.shape[1] < 2:
        return batch
    used = np.flatnonzero(mask.any(axis=0))
    length = max(int(used[-1]) + 1 if used.size else 0, min_length, 2)
    if length >= mask.shape[1]:  # columns from `length` on are padding in every row, by construction
        return batch
    return {k: v[:, :length] if v.ndim == 2 and v.shape[1] == mask.shape[1] else v for k, v in batch.items()}
