"""The embedded benchmark: procedurally drawn street scenes in one source and several target domains.

Layout: ``<out>/<domain>/images/<split>/<id>.png`` (RGB), ``<out>/<domain>/labels/<split>/<id>.png`` (8-bit
trainIds), one Parquet manifest per domain and split (:func:`recyclelora.data.manifest.manifest_path`), and
``<out>/benchmark.json`` written last. The source domain has ``train`` and ``val`` splits, each target domain
``val``. Image ``i`` of a domain and split draws from ``np.random.default_rng([seed, crc32(domain),
crc32(split), i])``, so every domain draws its own scenes and the output is byte-identical for a seed,
whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from recyclelora.data.classes import CLASS_NAMES, NUM_CLASSES
from recyclelora.data.images import read_pair
from recyclelora.data.manifest import Sample, manifest_path, read_manifest, write_manifest
from recyclelora.data.prepare import default_workers
from recyclelora.data.synth_config import SynthConfig
from recyclelora.data.synth_domains import DOMAINS, SOURCE_DOMAIN
from recyclelora.data.synth_scene import draw_scene
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

BENCHMARK_FORMAT = 1
PNG_COMPRESS_LEVEL = 6
#: The benchmark ``generate_benchmark`` draws unless given another size.
DEFAULT_CONFIG = SynthConfig()


@dataclass(frozen=True)
class BenchmarkSummary:
    """What :func:`generate_benchmark` produced: manifests per domain and split, and whether it was reused."""

    root: Path
    manifests: dict[str, dict[str, Path]]
    reused: bool
    seconds: float


@dataclass(frozen=True)
class _Task:
    root: Path
    seed: int
    domain: str
    split: str
    index: int
    width: int
    height: int


def image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image, seeded by (seed, domain, split, index): stable across runs, platforms."""
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index])


def render_image(
    seed: int, domain: str, split: str, index: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene and render it in ``domain``: (RGB uint8 (H, W, 3), trainId uint8 (H, W))."""
    rng = image_rng(seed, domain, split, index)
    scene = draw_scene(rng, width, height)
    return DOMAINS[domain](scene, rng), scene.label


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _generate(task: _Task) -> dict:
    """Render, write and describe one image (a manifest row); runs in a worker process."""
    image, label = render_image(task.seed, task.domain, task.split, task.index, task.width, task.height)
    stem = f"{task.index:06d}.png"
    image_rel = f"{task.domain}/images/{task.split}/{stem}"
    label_rel = f"{task.domain}/labels/{task.split}/{stem}"
    label_png = _png(label)
    atomic_write_bytes(task.root / image_rel, _png(image))
    atomic_write_bytes(task.root / label_rel, label_png)
    return {
        "dataset": task.domain,
        "split": task.split,
        "image": image_rel,
        "label": label_rel,
        "height": task.height,
        "width": task.width,
        "class_pixels": np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].tolist(),
        "label_sha256": sha256_bytes(label_png),
    }


def _record(seed: int, config: SynthConfig) -> dict:
    return {
        "format": BENCHMARK_FORMAT,
        "seed": seed,
        "config": {**asdict(config), "targets": list(config.targets)},
        "source": SOURCE_DOMAIN,
        "targets": list(config.targets),
        "counts": config.splits(),
        "classes": list(CLASS_NAMES),
    }


def _manifests(root: Path, config: SynthConfig) -> dict[str, dict[str, Path]]:
    return {
        domain: {split: manifest_path(root, domain, split) for split in splits}
        for domain, splits in config.splits().items()
    }


def _verify(root: Path, config: SynthConfig) -> bool:
    """True when every manifest is readable, complete, and every label file matches its checksum."""
    for domain, splits in config.splits().items():
        for split, count in splits.items():
            try:
                samples = read_manifest(manifest_path(root, domain, split))
            except (FileNotFoundError, ValueError):
                return False
            if len(samples) != count or not all(_intact(sample) for sample in samples):
                return False
    return True


def _intact(sample: Sample) -> bool:
    return (
        sample.image.is_file() and sample.label.is_file() and sha256_file(sample.label) == sample.label_sha256
    )


def _reusable(info_path: Path, record: dict, config: SynthConfig) -> bool:
    """True for an intact benchmark of these settings; a broken one is marked stale (its record removed)."""
    if not info_path.is_file():
        return False
    try:
        existing = json.loads(info_path.read_text())
    except json.JSONDecodeError:
        existing = None
    if isinstance(existing, dict) and existing != record:
        raise InvalidInputError(
            f"{info_path.parent} already holds a benchmark with other settings (seed {existing.get('seed')}, "
            f"config {existing.get('config')}): pass another output folder or delete this one"
        )
    if existing == record and _verify(info_path.parent, config):
        return True
    info_path.unlink()
    return False


def generate_benchmark(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    config: SynthConfig = DEFAULT_CONFIG,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkSummary:
    """Generate the embedded benchmark under ``out`` (or reuse it when it is already there and intact).

    ``workers`` processes render the images in parallel (default: all usable CPUs; 1 renders in this
    process; Python's default start method, so call it under ``if __name__ == "__main__"`` where that is
    spawn or forkserver); the output does not depend on it. ``progress(done, total)`` runs after each image.
    A folder holding a benchmark of another seed or config is refused rather than mixed with the new one.
    """
    if seed < 0:
        raise InvalidInputError(f"seed={seed} must be a non-negative integer")
    if workers is not None and workers < 1:
        raise InvalidInputError(f"workers={workers} must be at least 1 (or None for all CPUs)")
    root = Path(out)
    start = time.perf_counter()
    record = _record(seed, config)
    info_path = root / "benchmark.json"
    if _reusable(info_path, record, config):
        return BenchmarkSummary(root, _manifests(root, config), True, time.perf_counter() - start)
    tasks = [
        _Task(root, seed, domain, split, index, config.width, config.height)
        for domain, splits in config.splits().items()
        for split, count in splits.items()
        for index in range(count)
    ]
    workers = min(workers or default_workers(), len(tasks))
    if workers == 1:
        rows = _collect(map(_generate, tasks), len(tasks), progress)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = _collect(pool.map(_generate, tasks, chunksize=4), len(tasks), progress)
    manifests = _manifests(root, config)
    for domain, splits in manifests.items():
        for split, path in splits.items():
            write_manifest(path, [row for row in rows if row["dataset"] == domain and row["split"] == split])
    atomic_write_text(info_path, json.dumps(record, indent=2) + "\n")
    return BenchmarkSummary(root, manifests, False, time.perf_counter() - start)


def _collect(results: Iterable[dict], total: int, progress: Callable[[int, int], None] | None) -> list[dict]:
    rows: list[dict] = []
    for row in results:
        rows.append(row)
        if progress is not None:
            progress(len(rows), total)
    return rows


@dataclass(frozen=True)
class ColourStats:
    """RGB statistics of a set of images: per class (19, 3) (NaN for absent classes) and overall (3,)."""

    class_mean: np.ndarray
    class_std: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def shift(self, reference: ColourStats) -> float:
        """Mean over classes present in both of the Euclidean distance between class-mean colours."""
        return float(np.nanmean(np.linalg.norm(self.class_mean - reference.class_mean, axis=1)))


def colour_stats(samples: list[Sample]) -> ColourStats:
    """Per-class and overall mean and standard deviation of the RGB values of ``samples``' labelled pixels."""
    sums = np.zeros((NUM_CLASSES, 3))
    squares = np.zeros((NUM_CLASSES, 3))
    pixels = np.zeros(NUM_CLASSES)
    for sample in samples:
        rgb, values = read_pair(sample.image, sample.label)
        image, label = rgb.reshape(-1, 3).astype(np.float64), values.ravel()
        keep = label < NUM_CLASSES
        for channel in range(3):
            sums[:, channel] += np.bincount(label[keep], image[keep, channel], NUM_CLASSES)
            squares[:, channel] += np.bincount(label[keep], image[keep, channel] ** 2, NUM_CLASSES)
        pixels += np.bincount(label[keep], minlength=NUM_CLASSES)
    total = pixels.sum()
    mean, std = (
        sums.sum(0) / total,
        np.sqrt(np.maximum(squares.sum(0) / total - (sums.sum(0) / total) ** 2, 0)),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = sums / pixels[:, None]
        class_std = np.sqrt(np.maximum(squares / pixels[:, None] - class_mean**2, 0))
    return ColourStats(class_mean, class_std, mean, std)
