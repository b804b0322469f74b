"""``recyclelora-cli merge``, ``export onnx`` and ``analyze``: turn a trained checkpoint into deployable files
and report what its adapters learned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from recyclelora.adapters import adapter_layers, merge_adapters
from recyclelora.adapters.export import lora_delta
from recyclelora.analysis import rank_report
from recyclelora.cli._common import console, user_errors
from recyclelora.cli.evaluate import WeightsOpt
from recyclelora.eval.analyze import rank_table, write_rank_report
from recyclelora.export import OnnxParityError, export_onnx, verify_onnx
from recyclelora.io import atomic_path, atomic_write_text, save_safetensors, sha256_file
from recyclelora.models import Segmentor, load_segmentor, merge_checkpoint, read_checkpoint_info

#: Largest ``max |merged - unmerged| / max |unmerged|`` over the logits that a merge may change.
MERGE_RTOL = 1e-4
#: Images in the fixed random batch the parity checks run on.
PARITY_BATCH = 2

export_app = typer.Typer(help="Export a checkpoint for deployment.", no_args_is_help=True)

CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Segmentor checkpoint (.safetensors).")]


def parity_input(height: int, width: int, batch: int = PARITY_BATCH, seed: int = 0) -> torch.Tensor:
    """A fixed normalised-image-like batch ``(batch, 3, height, width)`` drawn from N(0, 1) with ``seed``."""
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def relative_logit_diff(model: Segmentor, reference: Segmentor, images: torch.Tensor) -> float:
    """``max |model(x) - reference(x)| / max |reference(x)|`` (a scale-free error; logits near 0 make a
    per-element relative error meaningless)."""
    with torch.inference_mode():
        actual, expected = model.eval()(images), reference.eval()(images)
    return float(
        (actual - expected).abs().max() / expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    )


def merge(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Merged checkpoint to write (plain timm backbone + head).")],
    backbone_weights: WeightsOpt = None,
) -> None:
    """Fold the adapters into the backbone weights; check the merged model's logits against the original's."""
    with user_errors():
        info = read_checkpoint_info(checkpoint)
        if info.merged:
            raise ValueError(f"{checkpoint} is already merged: merging twice is refused; use it as it is")
        source_sha256 = sha256_file(checkpoint)
        console.print(f"source {checkpoint}  sha256 {source_sha256}")
        original, _, _ = load_segmentor(checkpoint, backbone_weights=backbone_weights)
        size = info.config.backbone.img_size
        with atomic_path(out) as tmp:  # the merged file only appears once it has passed the check
            merge_checkpoint(checkpoint, tmp, backbone_weights=backbone_weights)
            merged, _, _ = load_segmentor(tmp)
            diff = relative_logit_diff(merged, original, parity_input(size, size))
            if diff > MERGE_RTOL:
                raise ValueError(
                    f"merged logits differ from the unmerged model's by {diff:.3g} of the largest "
                    f"logit (allowed {MERGE_RTOL:g}): nothing was written; report this as a bug"
                )
    console.print(
        f"merged {out}: logits within {diff:.2e} of the unmerged model (relative, allowed {MERGE_RTOL:g})"
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
) -> None:
    """Export a checkpoint (adapters merged in memory) to ONNX, dynamic batch; check it against torch."""
    with user_errors():
        model, _, _ = load_segmentor(checkpoint, backbone_weights=backbone_weights)
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


@export_app.command("lora")
def export_lora_command(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(help="Folder for adapter_model.safetensors and adapter_config.json.")],
) -> None:
    """The trained update as a peft LoRA (rank 2 (r_main + r_sub)) on the untouched pretrained backbone."""
    with user_errors():
        info = read_checkpoint_info(checkpoint)
        if info.merged or info.config.tuning != "adapters":
            raise ValueError(f"{checkpoint} holds no adapters (merged or tuning={info.config.tuning!r})")
        model, _, factors = load_segmentor(checkpoint)
        delta = lora_delta(model.backbone.vit, factors)
        tensors = {f"base_model.model.{key}": value for key, value in delta.state_dict.items()}
        adapter_config = {
            "peft_type": "LORA",
            "base_model_name_or_path": info.config.backbone.name,
            "r": delta.rank,
            "lora_alpha": delta.lora_alpha,
            "target_modules": list(delta.target_modules),
            "lora_dropout": 0.0,
            "bias": "none",
        }
        out.mkdir(parents=True, exist_ok=True)
        save_safetensors(tensors, out / "adapter_model.safetensors")
        atomic_write_text(out / "adapter_config.json", json.dumps(adapter_config, indent=2) + "\n")
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
    with user_errors():
        info = read_checkpoint_info(checkpoint)
        if info.merged:
            source = info.metadata.get("source_sha256", "?")
            raise ValueError(
                f"{checkpoint} is merged: its adapters are folded into the backbone and cannot be analysed; "
                f"analyse the checkpoint it was merged from (sha256 {source[:16]}...)"
            )
        if info.config.tuning != "adapters":
            raise ValueError(
                f"{checkpoint} was trained with tuning={info.config.tuning!r}: it has no adapters to analyse"
            )
        model, _, _ = load_segmentor(checkpoint, backbone_weights=backbone_weights)
        reports = rank_report(model)
        paths = write_rank_report(reports, out) if out is not None else None
    console.print(rank_table(reports))
    if paths is not None:
        console.print("wrote " + ", ".join(str(path) for path in paths.values()))
