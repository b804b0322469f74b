"""``recyclelora-cli eval`` (score a model on labelled target datasets) and ``predict`` (your own images)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recyclelora.cli.common import console, user_errors
from recyclelora.errors import InvalidInputError

if TYPE_CHECKING:  # imported by the commands that use them: --help stays free of torch
    import torch

    from recyclelora.eval.predict import InferenceConfig
    from recyclelora.eval.predictors import OnnxPredictor, TorchPredictor


class Backend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


ModelOpt = Annotated[
    Path,
    typer.Option(
        "--model",
        help="Checkpoint (.safetensors, merged or not) for torch, or an .onnx file for onnxruntime.",
    ),
]
BackendOpt = Annotated[Backend, typer.Option(help="Inference backend.")]
CropOpt = Annotated[
    int, typer.Option(help="Sliding-window size (square); ONNX models: their input size.", min=1)
]
StrideOpt = Annotated[
    int | None,
    typer.Option(help="Sliding-window stride (<= crop); default: 2/3 of the crop (341 for 512).", min=1),
]
WholeOpt = Annotated[bool, typer.Option("--whole", help="Score each image in one pass, without windows.")]
ResizeOpt = Annotated[
    str | None, typer.Option(help="Score at this size WIDTHxHEIGHT; scores are resized back to the image.")
]
ShortEdgeOpt = Annotated[
    int | None, typer.Option(help="Or score with the short edge resized to this length (aspect kept).", min=1)
]
FitOpt = Annotated[
    str | None,
    typer.Option(help="Or score at the largest size inside LONGxSHORT, aspect kept (Mapillary: 2048x1024)."),
]
DeviceOpt = Annotated[str | None, typer.Option(help="torch device (default: cuda when available, else cpu).")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(help="Pretrained backbone weights to rebuild an unmerged checkpoint from (file or source)."),
]
OverlaysOpt = Annotated[bool, typer.Option("--overlays", help="Also write class colours over each image.")]
#: recyclelora.data.images.DEFAULT_MAX_PIXELS, spelled out: importing it would load numpy and Pillow for --help.
DEFAULT_MAX_PIXELS = 8192 * 8192
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        help="Refuse an image or label of more pixels (width x height), from its header, before decoding it "
        "(default: 64 megapixels).",
        min=1,
    ),
]


def parse_size(value: str, option: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(width, height)``."""
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 1024x512", param_hint=option) from None
    return width, height


def torch_device(name: str | None) -> torch.device:
    """The device ``name`` (default: cuda when available), refused when this machine lacks it."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {name} needs CUDA, which this machine lacks: use --device cpu")
    return device


def inference_config(
    crop: int, stride: int | None, whole: bool, resize: str | None, short_edge: int | None, fit: str | None
) -> InferenceConfig:
    from recyclelora.eval.predict import InferenceConfig
    from recyclelora.eval.sliding import SlidingWindowConfig

    stride = crop * 2 // 3 if stride is None else stride  # the protocol's 341 for 512
    sliding = None if whole else SlidingWindowConfig(crop=(crop, crop), stride=(stride, stride))
    size = None if resize is None else parse_size(resize, "--resize")
    fit_size = None if fit is None else parse_size(fit, "--fit")
    return InferenceConfig(sliding=sliding, size=size, short_edge=short_edge, fit=fit_size)


def load_predictor(
    model: Path, backend: Backend, device: torch.device, backbone_weights: str | None, config: InferenceConfig
) -> TorchPredictor | OnnxPredictor:
    """A predictor for ``model`` on ``backend``; an ONNX model's fixed input size must be the window size."""
    from recyclelora.eval.predict import torch_predictor
    from recyclelora.eval.predictors import OnnxPredictor

    if backend is Backend.torch:
        if model.suffix == ".onnx":
            raise InvalidInputError(f"{model} is an ONNX model: evaluate it with --backend onnxruntime")
        return torch_predictor(model, device, backbone_weights)
    if model.suffix != ".onnx":
        raise InvalidInputError(
            f"--backend onnxruntime needs an .onnx model, got {model}: export one with "
            "`recyclelora-cli export onnx --checkpoint CHECKPOINT --out MODEL.onnx`"
        )
    predictor = OnnxPredictor(model)
    exported = tuple(predictor.input_shape[2:])
    if (
        config.sliding is not None
        and all(isinstance(v, int) for v in exported)
        and exported != config.sliding.crop
    ):
        height, width = exported
        fix = f"pass --crop {height}" if height == width else f"use --whole --resize {width}x{height}"
        crop = config.sliding.crop[0]
        raise InvalidInputError(
            f"{model} was exported for {height}x{width} (HxW) inputs, but the sliding windows are {crop}x{crop}: "
            f"{fix}, or export again with --height {crop} --width {crop}"
        )
    return predictor


def group_by_dataset(manifests: list[Path]) -> dict[str, list[Path]]:
    """Manifests grouped by their ``dataset`` column, in order of first appearance."""
    from recyclelora.data.manifest import read_manifest

    if not manifests:
        raise InvalidInputError("no manifest given: pass --data MANIFEST (repeat it for several datasets)")
    groups: dict[str, list[Path]] = {}
    for path in manifests:
        datasets = sorted({sample.dataset for sample in read_manifest(path)})
        if len(datasets) != 1:
            raise InvalidInputError(
                f"manifest {path} mixes datasets {datasets}: pass one manifest per dataset and split"
            )
        groups.setdefault(datasets[0], []).append(path)
    return groups


def eval_command(
    model: ModelOpt,
    data: Annotated[
        list[Path],
        typer.Option(
            help="Manifest of a labelled split (repeat); manifests of one dataset are scored together."
        ),
    ],
    backend: BackendOpt = Backend.torch,
    crop: CropOpt = 512,
    stride: StrideOpt = None,
    whole: WholeOpt = False,
    resize: ResizeOpt = None,
    short_edge: ShortEdgeOpt = None,
    fit: FitOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write metrics.json, per_class.parquet, per_image.parquet, confusion/*.csv and "
            "class_iou.png here."
        ),
    ] = None,
    save_predictions: Annotated[
        Path | None,
        typer.Option(help="Write each prediction as <dir>/<dataset>/<image stem>.png (trainIds)."),
    ] = None,
    overlays: OverlaysOpt = False,
    device: DeviceOpt = None,
    backbone_weights: WeightsOpt = None,
    workers: Annotated[
        int, typer.Option(help="DataLoader processes reading images (0: in this one).", min=0)
    ] = 0,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Score a model on target datasets: one confusion matrix and mIoU per dataset, and their mean."""
    import torch
    from torch.utils.data import DataLoader

    from recyclelora.data.dataset import SegmentationDataset
    from recyclelora.data.transform_config import EvalTransformConfig
    from recyclelora.data.transforms import EvalTransform
    from recyclelora.eval.evaluate import evaluate
    from recyclelora.eval.reports import metrics_table, write_reports

    with user_errors():
        config = inference_config(crop, stride, whole, resize, short_edge, fit)
        target = torch_device(device) if backend is Backend.torch else torch.device("cpu")
        groups = group_by_dataset(data)
        predictor = load_predictor(model, backend, target, backbone_weights, config)
        transform = EvalTransform(
            EvalTransformConfig(size=config.size, short_edge=config.short_edge, fit=config.fit)
        )
        datasets = {
            name: DataLoader(
                SegmentationDataset(paths, transform, max_pixels=max_pixels, classes=predictor.classes),
                batch_size=None,
                num_workers=workers,
            )
            for name, paths in groups.items()
        }
        result = evaluate(
            predictor,
            datasets,
            sliding=config.sliding,
            classes=predictor.classes,
            device=target,
            save_predictions=save_predictions,
            overlays=overlays,
        )
    console.print(metrics_table(result))
    if out is not None:
        paths = write_reports(result, out)
        console.print(
            f"reports: {paths['metrics']}, {paths['per_class']}, {paths['per_image']}, {paths['plot']}, "
            f"{out / 'confusion'}/*.csv"
        )
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


def predict_command(
    images: Annotated[
        list[Path], typer.Argument(help="Image files (any size, any format PIL reads), or folders of them.")
    ],
    model: ModelOpt,
    out: Annotated[
        Path, typer.Option(help="Output folder: pred/<stem>.png (trainIds), pred_overlay/<stem>.png.")
    ],
    overlays: OverlaysOpt = False,
    backend: BackendOpt = Backend.torch,
    crop: CropOpt = 512,
    stride: StrideOpt = None,
    whole: WholeOpt = False,
    resize: ResizeOpt = None,
    short_edge: ShortEdgeOpt = None,
    fit: FitOpt = None,
    device: DeviceOpt = None,
    backbone_weights: WeightsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Segment your own images (no labels): a class-id PNG per image, with optional colour overlays."""
    import torch

    from recyclelora.eval.predict import InferencePredictor, predict_images

    with user_errors():
        config = inference_config(crop, stride, whole, resize, short_edge, fit)
        target = torch_device(device) if backend is Backend.torch else torch.device("cpu")
        predictor = load_predictor(model, backend, target, backbone_weights, config)
        predict = InferencePredictor(predictor, config)
        written = predict_images(
            predict, images, out, overlays=overlays, device=target, max_pixels=max_pixels, classes=predictor.classes
        )
    console.print(f"wrote {len(written)} prediction(s) to {written[0].parent}")
