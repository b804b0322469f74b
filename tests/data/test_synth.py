"""The embedded benchmark: determinism, layout plausibility, manifests, domain shift, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recyclelora.data.classes import NUM_CLASSES
from recyclelora.data.manifest import read_manifest
from recyclelora.data.synth import SynthConfig, colour_stats, generate_benchmark
from recyclelora.data.synth_domains import SOURCE_DOMAIN, TARGET_DOMAINS
from recyclelora.data.synth_scene import ROAD, SKY
from recyclelora.io import sha256_file

TINY = SynthConfig(width=128, height=64, source_train=16, source_val=6, target_val=6)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):
    return generate_benchmark(tmp_path_factory.mktemp("bench"), seed=0, config=TINY, workers=1)


def _samples(bench, domain: str, split: str):
    return read_manifest(bench.manifests[domain][split])


def _labels(bench) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(sample.label))
        for splits in bench.manifests.values()
        for path in splits.values()
        for sample in read_manifest(path)
    ]


def test_same_seed_is_byte_identical_whatever_the_workers(bench, tmp_path: Path) -> None:
    again = generate_benchmark(tmp_path / "again", seed=0, config=TINY, workers=2)
    assert not again.reused
    reference = _digests(bench.root)
    assert _digests(again.root) == reference
    assert len([name for name in reference if name.endswith(".png")]) == 2 * (
        16 + 6 + 6 * len(TARGET_DOMAINS)
    )


def test_other_seed_gives_other_scenes(bench, tmp_path: Path) -> None:
    small = SynthConfig(width=128, height=64, source_train=3, source_val=1, target_val=1)
    first = generate_benchmark(tmp_path / "s0", seed=0, config=small, workers=1)
    other = generate_benchmark(tmp_path / "s1", seed=1, config=small, workers=1)
    a, b = _digests(first.root), _digests(other.root)
    pngs = [name for name in a if name.endswith(".png")]
    assert all(a[name] != b[name] for name in pngs)
    # The same seed and index draw different scenes in different domains.
    src = np.asarray(Image.open(first.root / "synth_src/labels/val/000000.png"))
    tex = np.asarray(Image.open(first.root / "synth_tex/labels/val/000000.png"))
    assert not np.array_equal(src, tex)


def test_layout_is_street_like(bench) -> None:
    labels = _labels(bench)
    rows = np.arange(TINY.height)[:, None]
    sky_above_road = [
        (rows * (label == SKY)).sum() / (label == SKY).sum()
        < (rows * (label == ROAD)).sum() / (label == ROAD).sum()
        for label in labels
        if (label == SKY).any()
    ]
    assert len(sky_above_road) > 0.8 * len(labels) and all(sky_above_road)
    assert all((label[-1] == ROAD).any() for label in labels), "the road must reach the bottom edge"
    assert all((label[0] != ROAD).all() for label in labels), "the road must not reach the top edge"
    stacked = np.stack(labels)
    assert stacked.max() < NUM_CLASSES
    assert set(np.unique(stacked).tolist()) == set(range(NUM_CLASSES)), "every class appears somewhere"


def test_manifests_match_files(bench) -> None:
    counts = json.loads((bench.root / "benchmark.json").read_text())["counts"]
    assert counts == {SOURCE_DOMAIN: {"train": 16, "val": 6}, **{t: {"val": 6} for t in TARGET_DOMAINS}}
    for domain, splits in bench.manifests.items():
        for split, path in splits.items():
            table = pq.read_table(path).to_pylist()
            assert all(
                not Path(row["image"]).is_absolute() and not Path(row["label"]).is_absolute() for row in table
            )
            samples = read_manifest(path)
            assert len(samples) == counts[domain][split]
            for sample in samples:
                assert (sample.dataset, sample.split) == (domain, split)
                label = np.asarray(Image.open(sample.label))
                image = Image.open(sample.image)
                assert image.mode == "RGB" and image.size == (TINY.width, TINY.height) == label.shape[::-1]
                assert sample.class_pixels == tuple(
                    np.bincount(label.ravel(), minlength=NUM_CLASSES).tolist()
                )
                assert sample.label_sha256 == sha256_file(sample.label)


def _colour_distance(stats, reference) -> float:
    """Mean over classes of the mean absolute difference of class-mean and class-std colours."""
    mean = np.abs(stats.class_mean - reference.class_mean).mean(1)
    std = np.abs(stats.class_std - reference.class_std).mean(1)
    return float(np.nanmean(mean + std))


def _roughness(samples) -> float:
    """Mean absolute difference between horizontally adjacent pixels of the same class."""
    total, count = 0.0, 0
    for sample in samples:
        image = np.asarray(Image.open(sample.image), dtype=np.float64)
        label = np.asarray(Image.open(sample.label))
        same = label[:, 1:] == label[:, :-1]
        total += np.abs(image[:, 1:] - image[:, :-1]).sum(-1)[same].sum()
        count += same.sum()
    return total / count


def test_target_domains_look_different(bench) -> None:
    reference = colour_stats(_samples(bench, SOURCE_DOMAIN, "train"))
    source_val = _samples(bench, SOURCE_DOMAIN, "val")
    within = _colour_distance(colour_stats(source_val), reference)
    for target in TARGET_DOMAINS:
        distance = _colour_distance(colour_stats(_samples(bench, target, "val")), reference)
        assert distance > 1.4 * within, (target, distance, within)
    assert _roughness(_samples(bench, "synth_tex", "val")) > 3 * _roughness(source_val)
    night = colour_stats(_samples(bench, "synth_night", "val"))
    assert night.mean.max() < 0.5 * reference.mean.min()


def test_reuse_verifies_and_repairs(tmp_path: Path) -> None:
    config = SynthConfig(
        width=64, height=32, source_train=2, source_val=1, target_val=1, targets=("synth_fog",)
    )
    first = generate_benchmark(tmp_path, seed=3, config=config, workers=1)
    digests = _digests(tmp_path)
    assert generate_benchmark(tmp_path, seed=3, config=config, workers=1).reused
    label = tmp_path / "synth_fog/labels/val/000000.png"
    label.write_bytes(b"corrupt")
    repaired = generate_benchmark(tmp_path, seed=3, config=config, workers=1)
    assert not repaired.reused and _digests(tmp_path) == digests
    assert first.manifests == repaired.manifests
    with pytest.raises(ValueError, match="other settings"):
        generate_benchmark(tmp_path, seed=4, config=config, workers=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 8}, "SynthConfig.width must be an integer >= 32, got 8"),
        ({"source_train": 0}, "source_train"),
        ({"target_val": 0}, "target_val"),
        ({"targets": ("synth_moon",)}, "targets"),
        ({"targets": ()}, "targets"),
        ({"targets": ("synth_fog", "synth_fog")}, "targets"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_cli_generates_and_reports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recyclelora.cli.main import app

    args = ["data", "synth", "--out", str(tmp_path), "--size", "64x32", "--train", "2", "--val", "1"]
    args += ["--target-val", "1", "--target", "synth_night", "--workers", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "benchmark.json").read_text())
    assert info["targets"] == ["synth_night"] and info["config"]["width"] == 64
    assert "synth_night" in result.output
    assert (
        CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path), "--size", "64by32"]).exit_code == 2
    )
