"""Test-time inference at a chosen size, and predictions for a user's own (unlabelled) images.

:class:`InferencePredictor` is mmseg's test pipeline behind the ``predict`` contract: an image normalised at
its original size ``H x W`` is resized to the inference size ``h x w`` (bilinear without antialiasing, as
mmseg's OpenCV resize; the rule is
:class:`~recyclelora.data.transforms.ResizeConfig`), scored by sliding windows or whole, and the scores are
resized back to ``H x W`` (bilinear), so that the argmax is compared with the original label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recyclelora.data.classes import CITYSCAPES_CLASSES, ClassSet
from recyclelora.data.images import open_image, read_image
from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, check_max_pixels
from recyclelora.data.transform_config import IMAGENET_MEAN, IMAGENET_STD, ResizeConfig
from recyclelora.data.transforms import image_tensor, normalize
from recyclelora.errors import InvalidInputError
from recyclelora.eval.evaluate import PROTOCOL_SLIDING, PredictionWriter
from recyclelora.eval.predictors import TorchPredictor
from recyclelora.eval.sliding import Predict, SlidingWindowConfig, slide_inference, whole_inference
from recyclelora.models.segmentor import Segmentor

#: Sub-folder of the output folder that receives the trainId PNGs (overlays go to ``<folder>_overlay``).
PREDICTION_FOLDER = "pred"


@dataclass(frozen=True)
class InferenceConfig(ResizeConfig):
    """How images are scored: sliding windows (``None``: the whole image at once) at the size of its resize rule."""

    sliding: SlidingWindowConfig | None = PROTOCOL_SLIDING


class InferencePredictor:
    """``predict`` wrapped into the test pipeline of :class:`InferenceConfig`; returns float32 scores
    ``(B, num_classes, H, W)`` at the input size, so pass it to ``evaluate(..., sliding=None)``. ``classes``
    are ``predict``'s own (a :class:`~recyclelora.eval.predictors.TorchPredictor`'s or ``OnnxPredictor``'s), or
    Cityscapes' for a bare function."""

    def __init__(self, predict: Predict, config: InferenceConfig) -> None:
        self.predict = predict
        self.config = config
        self.classes: ClassSet = getattr(predict, "classes", CITYSCAPES_CLASSES)
        self.num_classes = len(self.classes)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        size = self.config.output_size(height, width)
        resized = size != (height, width)
        if resized:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.config.sliding is None:
            scores = whole_inference(self.predict, images, self.num_classes)
        else:
            scores = slide_inference(self.predict, images, self.num_classes, self.config.sliding)
        if resized:
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        return scores


def torch_predictor(
    checkpoint: str | os.PathLike[str], device: torch.device | str, backbone_weights: str | None = None
) -> TorchPredictor:
    """A checkpoint (merged, or unmerged with its ``backbone_weights``; safetensors only) run on ``device``."""
    return TorchPredictor(Segmentor.from_checkpoint(checkpoint, backbone_weights=backbone_weights), device)


def image_input(
    pixels: np.ndarray, device: torch.device | str, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 RGB image as the normalised ``(3, H, W)`` float tensor ``predict`` is given."""
    return normalize(image_tensor(pixels), tuple(mean), tuple(std)).to(device)


@torch.inference_mode()
def label_map(predict: Predict, image: torch.Tensor) -> torch.Tensor:
    """The trainIds ``(H, W)`` (argmax of the scores) ``predict`` gives one :func:`image_input` image."""
    return predict(image.unsqueeze(0)).argmax(1)[0]


#: File endings of the images a folder given to :func:`predict_images` contributes.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def expand_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``paths`` with each folder replaced by the image files directly inside it (:data:`IMAGE_SUFFIXES`,
    sorted by name); a folder without images is an error."""
    expanded = []
    for path in map(Path, paths):
        if not path.is_dir():
            expanded.append(path)
            continue
        found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InvalidInputError(
                f"folder {path} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) directly inside it"
            )
        expanded.extend(found)
    return expanded


def predict_images(
    predict: Predict,
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overlays: bool = False,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    classes: ClassSet = CITYSCAPES_CLASSES,
) -> list[Path]:
    """Write the argmax of ``predict`` for each image as ``out/pred/<stem>.png`` (8-bit trainIds at the
    image's size) and, with ``overlays``, the colours of ``classes`` over the image at
    ``out/pred_overlay/<stem>.png``.

    ``predict`` sees one normalised ``(1, 3, H, W)`` image at its original size (e.g. a
    :class:`InferencePredictor`). Each image is read upright and as a viewer shows it, and refused above
    ``max_pixels`` (:func:`~recyclelora.data.images.read_image`). A folder stands for the images directly inside
    it. Images with the same stem, missing or unidentifiable files and images above ``max_pixels`` are refused
    from their headers before any is decoded or predicted.
    """
    check_max_pixels(max_pixels)
    paths = expand_images(images)
    if not paths:
        raise InvalidInputError("no image to predict: pass at least one image file")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise InvalidInputError(
                f"{stems[path.stem]} and {path} have the same stem {path.stem!r}, so their predictions would "
                "overwrite each other: predict them in separate runs"
            )
        stems[path.stem] = path
        with open_image(path, max_pixels):
            pass
    writer = PredictionWriter(out, overlays, mean, std, classes)
    written = []
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("predict", total=len(paths))
        for path in paths:
            image = image_input(read_image(path, max_pixels=max_pixels), device, mean, std)
            pred = label_map(predict, image)
            writer.write(PREDICTION_FOLDER, path.stem, pred, image)
            written.append(Path(out) / PREDICTION_FOLDER / f"{path.stem}.png")
            bar.advance(task)
    return written
