"""fedyolo.fedserver: the federation server. Tasks, rounds, aggregation, durable storage, HTTP API.

Never imports torch, onnxruntime or executorch (checked by tests/fedserver/test_boundaries.py).
"""
