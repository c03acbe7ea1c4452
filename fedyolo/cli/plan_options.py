"""The round plan's options, declared once for `serve` and `simulate` (both build one FederationPlan),
and the backend option of the commands that train."""

from __future__ import annotations

from typing import Annotated

import typer

Rounds = Annotated[int, typer.Option(min=1, help="rounds per task")]
LocalEpochs = Annotated[int, typer.Option(min=1, help="epochs each client trains a round")]
ClientLr = Annotated[float, typer.Option(help="clients' learning rate (AdamW) in round 1; see --lr-schedule")]
LrSchedule = Annotated[
    str, typer.Option(help="constant, or cosine: from --lr down towards 0 by the last round")
]
BatchSize = Annotated[int, typer.Option(min=1, help="clients' batch size")]
ProximalMu = Annotated[float, typer.Option(help="FedProx term; 0 is FedAvg")]
ClipNorm = Annotated[float, typer.Option(help="clip each update's change to this L2 norm; 0 off")]
AdaptiveClip = Annotated[
    float,
    typer.Option(help="clip each update's change to this multiple of the recent median change; 0 off"),
]
ExampleCap = Annotated[
    float, typer.Option(help="an update weighs at most this multiple of the recent median claim; 0 off")
]
Aggregate = Annotated[str, typer.Option(help="mean (weighted), or the robust median or trimmed_mean")]
Trim = Annotated[float, typer.Option(help="trimmed_mean: the share cut from each end")]
Strategy = Annotated[str, typer.Option(help="fedavg, fedavgm or fedadam")]
ServerLr = Annotated[float | None, typer.Option(help="server learning rate (strategy default)")]
Backend = Annotated[str, typer.Option(help="ort (ONNX Runtime), or executorch (the 'executorch' extra)")]
ServerMomentum = Annotated[float, typer.Option(help="FedAvgM's momentum")]
