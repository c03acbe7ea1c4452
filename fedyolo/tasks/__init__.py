"""Built-in tasks (``topics``, ``language``) and a user's own labelled data: fixed test splits,
label maps, and Dirichlet partitions of the train split among federated clients."""

from fedyolo.runtime.data import Example
from fedyolo.tasks.command import data_command
from fedyolo.tasks.partition import dirichlet_partition, label_entropy
from fedyolo.tasks.split import dedupe, held_out_split, text_key
from fedyolo.tasks.task import BUILTIN_TASKS, TaskData, load_task, task_from_file, write_examples

__all__ = [
    "BUILTIN_TASKS",
    "Example",
    "TaskData",
    "data_command",
    "dedupe",
    "dirichlet_partition",
    "held_out_split",
    "label_entropy",
    "load_task",
    "task_from_file",
    "text_key",
    "write_examples",
]
