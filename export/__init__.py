"""fedyolo.export: the PC side. A frozen backbone + a module → ONNX Runtime training artifacts in a bundle.

Needs the `export` extra (torch, transformers, peft, onnx); never imports the server.
"""
