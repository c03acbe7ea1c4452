"""fedyolo: on-device federated fine-tuning over one frozen backbone and small per-task modules."""

__version__ = "0.1.0"
