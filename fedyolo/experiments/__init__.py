"""Experiments built from library calls, shared by the demo and the benchmarks: the fully-local baseline
(`local_baseline`) and forgetting with one module per task against one shared module (`forgetting`)."""
