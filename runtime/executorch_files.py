"""Names the ExecuTorch backend's export and runtime agree on (plain Python: no executorch import)."""

from __future__ import annotations

# tasks/<task_id>/program.pte: the joint forward/backward program, trainable tensors inside it.
PROGRAM = "program.pte"
# backbone/backbone.ptd: every frozen backbone tensor under the backbone's own parameter name, stored
# once for every task's program (tensors a program does not read are simply not looked up).
BACKBONE_DATA_FILE = "backbone/backbone.ptd"
BACKBONE_DATA_KEY = "backbone"  # the data file's tag at export: to_executorch writes "backbone.ptd"
IGNORE_LABEL = -100  # the label of padding rows: the program's loss ignores them
