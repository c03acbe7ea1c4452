"""`fedyolo demo`: a real federated run of several tasks over one frozen backbone, in one command
(export → server process → client processes → observer → report)."""
