"""``python -m pipeline ...``: the DVC pipeline's stages (dvc.yaml calls them) and its presets.

Run from the workspace root (DVC runs every ``cmd`` there): ``python -m`` puts the working directory first on
``sys.path``, so a stage runs the workspace's own ``pipeline/`` and ``recyclelora/``, not an installed copy, and
a queued ``dvc exp run`` (a copy of the workspace under ``.dvc/tmp/exps``) runs the code it was queued with.
Each command imports its stage module only when it runs: ``--help`` stays light, and a stage imports what it
uses (mlflow, and torch for most).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pipeline.sweep.command import sweep
from recyclelora.cli.common import console, errors, root_app, user_errors
from recyclelora.errors import require_extra

app = root_app(
    "python -m pipeline",
    "Stages of the DVC pipeline (see dvc.yaml; run them with `dvc repro`) and params presets.",
)


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """:func:`~recyclelora.cli.common.user_errors`, after checking the pipeline's own dependency (MLflow)."""
    with user_errors():
        require_extra("mlflow", "pipeline", "The DVC pipeline's stages (MLflow tracking)")
        yield


Params = Annotated[Path, typer.Option(help="The pipeline's params.yaml (its folder is the DVC workspace).")]
Out = Annotated[Path, typer.Option(help="Output this stage writes (a DVC output).")]
Metrics = Annotated[Path, typer.Option(help="DVC metrics file (JSON) this stage writes.")]
Weights = Annotated[Path, typer.Option(help="Output folder of the weights stage.")]
Checkpoint = Annotated[Path, typer.Option(help="Segmentor checkpoint (safetensors) to read.")]
ShowProgress = Annotated[bool, typer.Option(help="Show progress bars.")]
Checksums = Annotated[Path, typer.Option(help="GTAV's zip checksums, read and extended by downloads.")]


@app.command("data")
def data(out: Out, checksums: Checksums, params: Params = Path("params.yaml")) -> None:
    """Generate the embedded benchmark and/or download and prepare real datasets (params: datasets)."""
    with stage_errors():
        from pipeline.stages import run_data

        counts = run_data(params, out, checksums)
    console.print(f"{len(counts)} manifests, {sum(counts.values())} samples -> {out}")


@app.command("weights")
def weights(out: Out, params: Params = Path("params.yaml")) -> None:
    """Fetch and convert the pretrained backbone (params: model.backbone)."""
    with stage_errors():
        from pipeline.stages import run_weights

        record = run_weights(params, out)
    console.print(f"{record['model']} from {record['source']}: {record['parameters']:,} values -> {out}")


@app.command("init")
def init(
    out: Out, weights: Weights, params: Params = Path("params.yaml"), progress: ShowProgress = True
) -> None:
    """Compute and cache the adapters' initial factors (params: model.backbone, model.adapter)."""
    with stage_errors():
        from pipeline.stages import run_init

        record = run_init(params, weights, out, progress=progress)
    console.print(f"{record['init']}: {record['layers']} matrices in {record['seconds']:.1f} s -> {out}")


@app.command("train")
def train(
    out: Out,
    metrics: Metrics,
    weights: Weights,
    init_cache: Annotated[Path, typer.Option(help="Output folder of the init stage.")],
    params: Params = Path("params.yaml"),
    progress: ShowProgress = True,
) -> None:
    """Train (params: base.seed, data, model, train); a crashed run with unchanged inputs resumes. With
    RECYCLELORA_NPROC_PER_NODE=N (or in a SLURM job of several nodes), N torchrun processes per node train."""
    with stage_errors():
        from pipeline.stages.train import launch, run_train

        launch(params, ["-m", "pipeline", *sys.argv[1:]])
        summary = run_train(params, weights, init_cache, out, metrics, progress=progress)
    if summary is None:  # a rank > 0: rank 0 says it
        return
    console.print(
        f"{summary['iterations']} iterations in {summary['seconds']:.0f} s, "
        f"loss {summary['final_loss']} -> {out}"
    )


@app.command("merge")
def merge(out: Out, checkpoint: Checkpoint, params: Params = Path("params.yaml")) -> None:
    """Fold the adapters into the backbone: a plain timm ViT + head checkpoint."""
    with stage_errors():
        from pipeline.stages import run_merge

        run_merge(params, checkpoint, out)
    console.print(f"merged {checkpoint} -> {out}")


@app.command("evaluate")
def evaluate(
    checkpoint: Checkpoint,
    reports: Annotated[Path, typer.Option(help="Folder of the full reports (a DVC output).")],
    metrics: Metrics,
    params: Params = Path("params.yaml"),
    progress: ShowProgress = True,
) -> None:
    """mIoU on every target domain (params: eval, data.val_transform, train.device)."""
    with stage_errors():
        from pipeline.stages import run_evaluate

        scores = run_evaluate(params, checkpoint, reports, metrics, progress=progress)
    for name, entry in scores.items():
        if isinstance(entry, dict):
            console.print(f"{name}: mIoU {100 * (entry['mIoU'] or 0):.2f}")
    console.print(f"mean mIoU {100 * (scores['mean_mIoU'] or 0):.2f} -> {metrics}")


@app.command("export")
def export(out: Out, checkpoint: Checkpoint, metrics: Metrics, params: Params = Path("params.yaml")) -> None:
    """Export the merged model to ONNX and check it against PyTorch (params: export)."""
    with stage_errors():
        from pipeline.stages import run_export

        record = run_export(params, checkpoint, out, metrics)
    console.print(f"{out}: {record['size_mb']:.1f} MB, relative error {record['max_rel_diff']:.2e}")


@app.command("package")
def package(
    out: Out,
    checkpoint: Checkpoint,
    eval_metrics: Annotated[Path, typer.Option(help="The evaluate stage's metric file, linked to the model.")],
    params: Params = Path("params.yaml"),
) -> None:
    """The merged model as an MLflow model, logged with its scores; registered if asked (params: track)."""
    with stage_errors():
        from pipeline.stages import run_package

        info = run_package(params, checkpoint, eval_metrics, out)
    console.print(f"MLflow model {info.model_uri if info else '(not logged)'} -> {out}")


@app.command("analyze")
def analyze(
    checkpoint: Checkpoint,
    reports: Annotated[Path, typer.Option(help="Folder of the per-layer reports (a DVC output).")],
    metrics: Metrics,
    params: Params = Path("params.yaml"),
) -> None:
    """Effective rank and subspace similarity of the trained adapters."""
    with stage_errors():
        from pipeline.stages import run_analyze

        means = run_analyze(params, checkpoint, reports, metrics)
    console.print(f"{means['layers']} adapter layers -> {metrics}")


@app.command("sync")
def sync(params: Params = Path("params.yaml")) -> None:
    """Send to the MLflow server what stages kept while it did not answer (each stage's start tries too)."""
    with stage_errors():
        from pipeline.tracking import spool_path, sync_spool

        sent = sync_spool(params.resolve().parent)
    console.print(f"{sent} MLflow record(s) sent; {spool_path(params.resolve().parent)} holds none")


@app.command("check")
def check(
    params: Params = Path("params.yaml"),
    write_comments: Annotated[
        bool,
        typer.Option(
            "--write-comments",
            help="Once params.yaml is valid, rewrite it from its own values with the comments generated from "
            "the config fields' help (after editing a help text).",
        ),
    ] = False,
) -> None:
    """Check params.yaml and every preset beside it (presets/) written over it, model names included: one line
    per problem, exit code 1 if any. Nothing is written unless --write-comments is given."""
    from pipeline.params import load_pipeline_params
    from pipeline.params_text import write_params
    from pipeline.presets import available_presets, check_presets
    from recyclelora.errors import UserError
    from recyclelora.models.backbone import check_model_name

    def check_file(path: Path) -> None:
        check_model_name(load_pipeline_params(path).run.model.backbone.name)

    with user_errors():
        problems: dict[str, str] = {}
        try:
            check_file(params)
        except UserError as error:
            problems[str(params)] = str(error)
        else:
            if write_comments:
                changed = write_params(params)
                console.print(f"{params}: comments {'rewritten' if changed else 'already up to date'}")
        problems |= {f"preset {name}": text for name, text in check_presets(params, check_file).items()}
        for where, text in problems.items():
            errors.print(f"[red]error:[/red] {escape(where)}: {escape(text)}", highlight=False, soft_wrap=True)
        if problems:
            raise typer.Exit(1)
    console.print(f"{params} and its {len(available_presets(params))} presets are valid")


@app.command("preset")
def preset(
    name: Annotated[str, typer.Argument(help="Preset name (presets/<NAME>.yaml) or a YAML file.")],
    params: Params = Path("params.yaml"),
) -> None:
    """Write a preset (e.g. the paper's G->CBM setting) over params.yaml; its comments are generated from the
    config fields' help."""
    from pipeline.presets import apply_preset

    with user_errors():
        changed = apply_preset(params, name)
    console.print(f"{params}: {len(changed)} value(s) changed by preset {name!r}")
    for key in changed:
        console.print(f"  {key}")


app.command("sweep")(sweep)
