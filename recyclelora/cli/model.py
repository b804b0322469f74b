"""``recyclelora-cli merge``, ``export onnx`` and ``analyze``: turn a trained checkpoint into deployable files
and report what its adapters learned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recyclelora.cli.common import console, user_errors
from recyclelora.cli.evaluate import WeightsOpt
from recyclelora.errors import InvalidInputError

export_app = typer.Typer(help="Export a checkpoint for deployment.", no_args_is_help=True)

CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Segmentor checkpoint (.safetensors).")]


def merge(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Merged checkpoint to write (plain timm backbone + head).")],
    backbone_weights: WeightsOpt = None,
) -> None:
    """Fold the adapters into the backbone weights; check the merged model's logits against the original's."""
    from recyclelora.models.merge import MERGE_RTOL, merge_checkpoint

    with user_errors():
        result = merge_checkpoint(checkpoint, out, backbone_weights=backbone_weights)
    console.print(f"source {checkpoint}  sha256 {result.source_sha256}")
    console.print(
        f"merged {out}: logits within {result.relative_diff:.2e} of the unmerged model (relative, allowed "
        f"{MERGE_RTOL:g})"
    )


@export_app.command("onnx")
def export_onnx_command(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="ONNX file to write (input 'images', output 'logits').")],
    height: Annotated[
        int, typer.Option(help="Input height (eval's --crop uses it as the window).", min=1)
    ] = 512,
    width: Annotated[int, typer.Option(help="Input width.", min=1)] = 512,
    opset: Annotated[int, typer.Option(help="ONNX opset version.", min=7)] = 18,
    backbone_weights: WeightsOpt = None,
    int8: Annotated[
        str | None,
        typer.Option(help="Also write an int8 copy beside --out (<name>.int8.onnx): 'static' (calibrated on "
                     "--calibration) or 'dynamic'."),
    ] = None,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(help="Source-domain manifest(s) whose images calibrate static int8 (repeatable)."),
    ] = None,
    calibration_windows: Annotated[int, typer.Option(help="Windows of the export size to calibrate on.", min=1)] = 64,
) -> None:
    """Export a checkpoint (adapters merged in memory) to ONNX, dynamic batch; check it against torch. With --int8,
    also an int8 copy by onnxruntime's quantization, and its argmax agreement with torch."""
    from recyclelora.adapters import adapter_layers, merge_adapters
    from recyclelora.export import QUANT_MODES, OnnxParityError, export_onnx, verify_onnx
    from recyclelora.models import Segmentor
    from recyclelora.models.merge import parity_input

    with user_errors():
        if int8 is not None and int8 not in QUANT_MODES:
            raise InvalidInputError(f"--int8 must be one of {', '.join(QUANT_MODES)}, got {int8!r}")
        if int8 == "static" and not calibration:
            raise InvalidInputError("--int8 static needs --calibration MANIFEST: source-domain images to set the int8 ranges")
        model = Segmentor.from_checkpoint(checkpoint, backbone_weights=backbone_weights)
        adapted = len(list(adapter_layers(model)))
        merge_adapters(model)
        if adapted:
            console.print(f"merged {adapted} adapter layers in memory")
        export_onnx(model, out, parity_input(height, width, batch=1), opset=opset)
        try:  # three images, so the batch dimension differs from the two the exporter traced with
            parity = verify_onnx(model, out, parity_input(height, width, batch=3, seed=1))
        except OnnxParityError as error:
            out.unlink()
            raise OnnxParityError(f"{error} ({out} was removed)") from None
    console.print(
        f"exported {out} ({height}x{width}, opset {opset}, dynamic batch): "
        f"max |diff| {parity.max_abs_diff:.3g} "
        f"at logit scale {parity.logit_scale:.3g} (relative {parity.max_rel_diff:.3g}, allowed 1e-3), "
        f"argmax agreement {parity.argmax_agreement:.4%}"
    )
    if int8 is not None:
        with user_errors():
            _write_int8(model, out, int8, calibration or [], calibration_windows, (height, width))


def _write_int8(model, out: Path, mode: str, calibration: list[Path], windows: int, size: tuple[int, int]) -> None:
    """Quantize ``out`` into ``<name>.int8.onnx`` and report its agreement with the torch model."""
    from recyclelora.data.transform_config import EvalTransformConfig
    from recyclelora.export import calibration_windows, int8_copy
    from recyclelora.models.merge import parity_input

    batches = calibration_windows(calibration, EvalTransformConfig(), size, windows) if mode == "static" else None
    copy = int8_copy(model, out, mode, batches, parity_input(*size, batch=3, seed=1))
    console.print(
        f"int8 ({mode}) {copy.path}: {copy.size_mb:.1f} MiB against {out.stat().st_size / 2**20:.1f} MiB, argmax "
        f"agreement with torch {copy.argmax_agreement:.2%} (not a gate: score it with `recyclelora-cli eval "
        "--backend onnxruntime`)"
    )


@export_app.command("lora")
def export_lora_command(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Folder for adapter_model.safetensors and adapter_config.json.")],
) -> None:
    """The trained update as a peft LoRA (rank 2 (r_main + r_sub)) on the untouched pretrained backbone."""
    from recyclelora.adapters.export import lora_delta
    from recyclelora.models import Segmentor, read_checkpoint_info

    with user_errors():
        info = read_checkpoint_info(checkpoint)
        if info.merged or info.config.tuning != "adapters":
            raise InvalidInputError(f"{checkpoint} holds no adapters (merged or tuning={info.config.tuning!r})")
        model = Segmentor.from_checkpoint(checkpoint)
        delta = lora_delta(model.backbone.vit, model.init_factors)
        delta.save_pretrained(out, base_model=info.config.backbone.name)
    console.print(f"LoRA of rank {delta.rank} on {len(delta.state_dict) // 2} layers of {info.config.backbone.name} -> {out}")


def analyze(
    checkpoint: CheckpointOpt,
    out: Annotated[
        Path | None,
        typer.Option(help="Write rank_report.parquet/.csv/.png and rank_summary.json (DVC metrics) here."),
    ] = None,
    backbone_weights: WeightsOpt = None,
) -> None:
    """Per adapter layer: effective rank, rank efficiency and main/sub subspace distance and similarity."""
    from recyclelora.analysis import rank_report
    from recyclelora.eval.analyze import rank_table, write_rank_report
    from recyclelora.models import Segmentor, read_checkpoint_info

    with user_errors():
        info = read_checkpoint_info(checkpoint)
        if info.merged:
            source = info.metadata.get("source_sha256", "?")
            raise InvalidInputError(
                f"{checkpoint} is merged: its adapters are folded into the backbone and cannot be analysed; "
                f"analyse the checkpoint it was merged from (sha256 {source[:16]}...)"
            )
        if info.config.tuning != "adapters":
            raise InvalidInputError(
                f"{checkpoint} was trained with tuning={info.config.tuning!r}: it has no adapters to analyse"
            )
        model = Segmentor.from_checkpoint(checkpoint, backbone_weights=backbone_weights)
        reports = rank_report(model)
        paths = write_rank_report(reports, out) if out is not None else None
    console.print(rank_table(reports))
    if paths is not None:
        console.print("wrote " + ", ".join(str(path) for path in paths.values()))
