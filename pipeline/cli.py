"""``recyclelora-cli stage ...``: the DVC pipeline's stages (dvc.yaml calls them) and its presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import presets, stages
from recyclelora.cli._common import console, user_errors

stage_app = typer.Typer(
    help="Stages of the DVC pipeline (see dvc.yaml; run them with `dvc repro`) and params presets.",
    no_args_is_help=True,
)

Params = Annotated[Path, typer.Option(help="The pipeline's params.yaml (its folder is the DVC workspace).")]
Out = Annotated[Path, typer.Option(help="Output this stage writes (a DVC output).")]
Metrics = Annotated[Path, typer.Option(help="DVC metrics file (JSON) this stage writes.")]
Weights = Annotated[Path, typer.Option(help="Output folder of the weights stage.")]
Checkpoint = Annotated[Path, typer.Option(help="Segmentor checkpoint (safetensors) to read.")]
ShowProgress = Annotated[bool, typer.Option(help="Show progress bars.")]


@stage_app.command("data")
def data(out: Out, params: Params = Path("params.yaml")) -> None:
    """Generate the embedded benchmark and/or download and prepare real datasets (params: datasets)."""
    with user_errors():
        counts = stages.run_data(params, out)
    console.print(f"{len(counts)} manifests, {sum(counts.values())} samples -> {out}")


@stage_app.command("weights")
def weights(out: Out, params: Params = Path("params.yaml")) -> None:
    """Fetch and convert the pretrained backbone (params: model.backbone)."""
    with user_errors():
        record = stages.run_weights(params, out)
    console.print(f"{record['model']} from {record['source']}: {record['parameters']:,} values -> {out}")


@stage_app.command("init")
def init(
    out: Out, weights: Weights, params: Params = Path("params.yaml"), progress: ShowProgress = True
) -> None:
    """Compute and cache the adapters' initial factors (params: model.backbone, model.adapter)."""
    with user_errors():
        record = stages.run_init(params, weights, out, progress=progress)
    console.print(f"{record['init']}: {record['layers']} matrices in {record['seconds']:.1f} s -> {out}")


@stage_app.command("train")
def train(
    out: Out,
    metrics: Metrics,
    weights: Weights,
    init_cache: Annotated[Path, typer.Option(help="Output folder of the init stage.")],
    params: Params = Path("params.yaml"),
    progress: ShowProgress = True,
) -> None:
    """Train (params: base.seed, data, model, train); a crashed run with unchanged inputs resumes."""
    with user_errors():
        summary = stages.run_train(params, weights, init_cache, out, metrics, progress=progress)
    console.print(
        f"{summary['iterations']} iterations in {summary['seconds']:.0f} s, "
        f"loss {summary['final_loss']} -> {out}"
    )


@stage_app.command("merge")
def merge(out: Out, checkpoint: Checkpoint, params: Params = Path("params.yaml")) -> None:
    """Fold the adapters into the backbone: a plain timm ViT + head checkpoint."""
    with user_errors():
        stages.run_merge(params, checkpoint, out)
    console.print(f"merged {checkpoint} -> {out}")


@stage_app.command("evaluate")
def evaluate(
    checkpoint: Checkpoint,
    reports: Annotated[Path, typer.Option(help="Folder of the full reports (a DVC output).")],
    metrics: Metrics,
    params: Params = Path("params.yaml"),
    progress: ShowProgress = True,
) -> None:
    """mIoU on every target domain (params: eval, data.val_transform, train.device)."""
    with user_errors():
        scores = stages.run_evaluate(params, checkpoint, reports, metrics, progress=progress)
    for name, entry in scores.items():
        if isinstance(entry, dict):
            console.print(f"{name}: mIoU {100 * (entry['mIoU'] or 0):.2f}")
    console.print(f"mean mIoU {100 * (scores['mean_mIoU'] or 0):.2f} -> {metrics}")


@stage_app.command("export")
def export(out: Out, checkpoint: Checkpoint, metrics: Metrics, params: Params = Path("params.yaml")) -> None:
    """Export the merged model to ONNX and check it against PyTorch (params: export)."""
    with user_errors():
        record = stages.run_export(params, checkpoint, out, metrics)
    console.print(f"{out}: {record['size_mb']:.1f} MB, relative error {record['max_rel_diff']:.2e}")


@stage_app.command("analyze")
def analyze(
    checkpoint: Checkpoint,
    reports: Annotated[Path, typer.Option(help="Folder of the per-layer reports (a DVC output).")],
    metrics: Metrics,
    params: Params = Path("params.yaml"),
) -> None:
    """Effective rank and subspace similarity of the trained adapters."""
    with user_errors():
        means = stages.run_analyze(params, checkpoint, reports, metrics)
    console.print(f"{means['layers']} adapter layers -> {metrics}")


@stage_app.command("preset")
def preset(
    name: Annotated[str, typer.Argument(help="Preset name (presets/<NAME>.yaml) or a YAML file.")],
    params: Params = Path("params.yaml"),
) -> None:
    """Write a preset (e.g. the paper's G->CBM setting) over params.yaml, keeping its comments."""
    with user_errors():
        changed = presets.apply_preset(params, name)
    console.print(f"{params}: {len(changed)} value(s) changed by preset {name!r}")
    for key in changed:
        console.print(f"  {key}")
