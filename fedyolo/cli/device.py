"""The device-side measuring and inference commands: `profile`, `predict`, `export onnx-inference`.

All three run from the base install (no torch); heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    """Mount the commands on the `fedyolo` app and its `export` group."""

    @app.command("profile")
    def profile_cmd(
        bundle: Annotated[Path, typer.Argument(help="bundle folder")],
        task: Annotated[str, typer.Option(help="task id in the bundle")],
        backend: Annotated[
            list[str] | None,
            typer.Option(help="ort, executorch (repeat for several); default: every one present"),
        ] = None,
        batch: Annotated[str, typer.Option(help="batch sizes, comma-separated")] = "8",
        seq: Annotated[str, typer.Option(help="tokens per example, comma-separated")] = "32",
        threads: Annotated[str, typer.Option(help="thread counts, comma-separated; 0: one per core")] = "0",
        steps: Annotated[int, typer.Option(min=1, help="timed steps per case (after 3 warm-up steps)")] = 20,
        duration: Annotated[
            float, typer.Option(help="sustained mode: step for this many seconds per case and report drift")
        ] = 0.0,
        json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
        plot: Annotated[Path | None, typer.Option(help="write a PNG here (needs the 'plot' extra)")] = None,
    ) -> None:
        """Will it fit, how fast is it: load, step latency, memory split, bytes, inference, compute floor."""
        from fedyolo.cli.profile import int_list, profile_command

        profile_command(
            bundle,
            task,
            backend,
            int_list(batch, "--batch"),
            int_list(seq, "--seq"),
            int_list(threads, "--threads"),
            steps,
            duration,
            json_out,
            plot,
        )

    @app.command("predict")
    def predict_cmd(
        model: Annotated[
            Path, typer.Argument(help="bundle folder, or a folder from `export onnx-inference`")
        ],
        texts: Annotated[list[str], typer.Argument(help="texts to classify")],
        task: Annotated[str | None, typer.Option(help="task id (a bundle only)")] = None,
        module: Annotated[
            Path | None, typer.Option(help="trained module.safetensors (default: the bundle's initial one)")
        ] = None,
        top: Annotated[int, typer.Option(min=1, help="labels shown per text")] = 3,
    ) -> None:
        """Labels and scores for texts, with a trained module over the shared backbone."""
        from fedyolo.cli.predict import predict_command

        predict_command(model, texts, task, module, top)

    @export_app.command("onnx-inference")
    def export_inference_cmd(
        bundle: Annotated[Path, typer.Argument(help="bundle folder")],
        task: Annotated[str, typer.Option(help="task id in the bundle")],
        out: Annotated[Path, typer.Option(help="new folder for model.onnx, its backbone, tokenizer, labels")],
        module: Annotated[
            Path | None, typer.Option(help="trained module.safetensors (default: the bundle's initial one)")
        ] = None,
        int8: Annotated[
            bool, typer.Option(help="dynamic int8 quantization, per channel (ONNX Runtime)")
        ] = False,
    ) -> None:
        """An inference-only ONNX model of a task's trained module over the frozen backbone (no torch needed)."""
        from fedyolo.cli.predict import export_inference_command

        export_inference_command(bundle, task, out, module, int8)
