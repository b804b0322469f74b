"""Training/evaluation transforms and the manifest-backed segmentation dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from recyclelora.data.dataset import KEPT_SCHEMA, SegmentationDataset, write_kept_samples
from recyclelora.data.manifest import manifest_path, write_manifest
from recyclelora.data.transform_config import EvalTransformConfig, ResizeConfig, TrainTransformConfig
from recyclelora.data.transforms import EvalTransform, TrainTransform
from recyclelora.io import sha256_file
from recyclelora.train.config import DataConfig

# ImageNet statistics as stated in the method notes (RGB, 0-255 scale).
MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


def _pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (height, width), dtype=np.uint8)
    return image, label


def _plain(**overrides) -> TrainTransformConfig:
    """No resize change, no photometric distortion, no flip: only crop, normalise and pad."""
    base = {
        "base_size": 32,
        "scale_ratios": (1.0,),
        "crop_size": (32, 48),
        "flip_prob": 0.0,
        "photometric": False,
    }
    return TrainTransformConfig(**{**base, **overrides})


def _normalised(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() - MEAN[:, None, None]) / STD[:, None, None]


# --- transforms -------------------------------------------------------------------------------------------


def test_train_output_has_crop_size_and_types() -> None:
    image, label = _pair(60, 90)
    out, lbl = TrainTransform(TrainTransformConfig(base_size=40, crop_size=(24, 36)))(
        image, label, np.random.default_rng(0)
    )
    assert out.shape == (3, 24, 36) and out.dtype == torch.float32
    assert lbl.shape == (24, 36) and lbl.dtype == torch.int64


def test_resized_size_follows_short_edge_and_caps_long_edge() -> None:
    transform = TrainTransform(TrainTransformConfig(base_size=50, max_long_edge=120))
    assert transform.resized_size(100, 200, 50) == (50, 100)
    assert transform.resized_size(100, 400, 50) == (30, 120)  # capped: 400 * 0.3 = 120
    assert transform.resized_size(80, 60, 25) == (33, 25)


def test_pad_after_normalize_fills_image_with_zero_and_label_with_ignore() -> None:
    image, label = _pair(20, 30)
    out, lbl = TrainTransform(_plain(base_size=20, crop_size=(32, 48), pad_at="after_normalize"))(
        image, label, np.random.default_rng(0)
    )
    torch.testing.assert_close(out[:, :20, :30], _normalised(image))
    assert torch.equal(lbl[:20, :30], torch.from_numpy(label).long())
    assert (out[:, 20:] == 0).all() and (out[:, :, 30:] == 0).all()
    assert (lbl[20:] == 255).all() and (lbl[:, 30:] == 255).all()


def _accepted_share(cat_max_ratio: float) -> float:
    """Share of crops (over 40 seeds) whose labelled pixels, 255 excluded, hold >1 class and none > 75 %."""
    label = np.zeros((48, 48), np.uint8)
    label[:24, :24] = 1
    label[36:] = 255  # ignored pixels must not count as a second class
    transform = TrainTransform(_plain(crop_size=(24, 24), cat_max_ratio=cat_max_ratio))
    good = 0
    for seed in range(40):
        top, left = transform.crop_origin(label, np.random.default_rng(seed))
        crop = label[top : top + 24, left : left + 24]
        counts = np.bincount(crop[crop != 255], minlength=2)
        good += int((counts > 0).sum() > 1 and counts.max() < 0.75 * counts.sum())
    return good / 40


def test_crop_honours_cat_max_ratio_ignoring_255() -> None:
    assert _accepted_share(0.75) > 0.9
    assert _accepted_share(1.0) < 0.5  # without the check most random crops are one class


def test_flip_moves_image_and_label_together() -> None:
    image, label = _pair(32, 48)
    flipped, flipped_label = TrainTransform(_plain(flip_prob=1.0))(image, label, np.random.default_rng(0))
    plain, plain_label = TrainTransform(_plain())(image, label, np.random.default_rng(0))
    torch.testing.assert_close(plain, _normalised(image))
    torch.testing.assert_close(flipped, plain.flip(-1))
    assert torch.equal(flipped_label, plain_label.flip(-1))


def test_normalisation_uses_imagenet_statistics() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[:2] = 255
    out, lbl = EvalTransform()(image, np.zeros((4, 6), np.uint8))
    torch.testing.assert_close(out[:, 0, 0], (255 - MEAN) / STD)
    torch.testing.assert_close(out[:, 3, 5], -MEAN / STD)
    assert lbl.dtype == torch.int64


def test_train_transform_is_deterministic_for_a_seed() -> None:
    image, label = _pair(50, 70)
    transform = TrainTransform(TrainTransformConfig(base_size=40, crop_size=(32, 32)))
    first = transform(image, label, np.random.default_rng(7))
    second = transform(image, label, np.random.default_rng(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    others = [transform(image, label, np.random.default_rng(seed))[0] for seed in range(8, 12)]
    assert not any(torch.equal(first[0], other) for other in others)


def test_photometric_distortion_changes_colours_only() -> None:
    image, label = _pair(32, 48)
    distorted = [
        TrainTransform(_plain(photometric=True))(image, label, np.random.default_rng(seed))
        for seed in range(6)
    ]
    plain = _normalised(image)
    assert any((out - plain).abs().max() > 0.1 for out, _ in distorted)
    assert all(torch.equal(lbl, torch.from_numpy(label).long()) for _, lbl in distorted)


def test_eval_transform_resizes_image_not_label() -> None:
    image, label = _pair(20, 40)
    out, lbl = EvalTransform(EvalTransformConfig(size=(80, 30)))(image, label)
    assert out.shape == (3, 30, 80) and lbl.shape == (20, 40)
    out, _ = EvalTransform(EvalTransformConfig(short_edge=10))(image, label)
    assert out.shape == (3, 10, 20)
    out, lbl = EvalTransform(EvalTransformConfig(fit=(16, 6)))(image, label)  # f = min(16 / 40, 6 / 20)
    assert out.shape == (3, 6, 12) and lbl.shape == (20, 40)


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (1500, 2000, (1024, 1365)),  # a halved Mapillary image: the short edge binds
        (2000, 1500, (1365, 1024)),  # portrait: the same rule on the long and short edges
        (1024, 2048, (1024, 2048)),  # Cityscapes already fits exactly
        (500, 1900, (539, 2048)),  # a panorama: the long edge binds
        (360, 640, (1024, 1820)),  # a small image is enlarged, as mmseg's keep-ratio Resize does
    ],
)
def test_fit_is_the_largest_size_inside_the_box(height: int, width: int, size: tuple[int, int]) -> None:
    assert ResizeConfig(fit=(2048, 1024)).output_size(height, width) == size
    assert ResizeConfig(fit=(1024, 2048)).output_size(height, width) == size  # (long, short) in any order
    assert ResizeConfig().output_size(height, width) == (height, width)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"crop_size": (0, 512)}, "crop_size"),
        ({"cat_max_ratio": 0.0}, "cat_max_ratio"),
        ({"cat_max_ratio": 1.5}, "cat_max_ratio"),
        ({"scale_ratios": ()}, "scale_ratios"),
        ({"flip_prob": 2.0}, "flip_prob"),
        ({"contrast_range": (1.5, 0.5)}, "contrast_range"),
        ({"hue_delta": 0.1}, "hue_delta"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainTransformConfig(**kwargs)


def test_eval_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        EvalTransformConfig(size=(10, 10), short_edge=10)
    with pytest.raises(ValueError, match="short_edge"):
        EvalTransformConfig(short_edge=0)
    with pytest.raises(ValueError, match="exclusive"):
        EvalTransformConfig(fit=(2048, 1024), short_edge=10)
    with pytest.raises(ValueError, match="fit"):
        EvalTransformConfig(fit=(2048, 0))


def test_transform_rejects_wrong_inputs() -> None:
    image, label = _pair(8, 8)
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform()(image.astype(np.float32), label)
    with pytest.raises(ValueError, match="shape"):
        EvalTransform()(image, label[:4])


# --- dataset ----------------------------------------------------------------------------------------------


def _manifest(
    root: Path, name: str, count: int, size: tuple[int, int] = (12, 16), bad: int | None = None
) -> Path:
    """A manifest of ``count`` random pairs of ``size`` (H, W); pair ``bad`` gets a label of another size."""
    rows = []
    for index in range(count):
        image, label = _pair(*size, seed=index + 100 * len(name))
        if index == bad:
            label = label[:, :-2]
        image_rel, label_rel = f"{name}/images/{index:03d}.png", f"{name}/labels/{index:03d}.png"
        (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
        (root / label_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / image_rel)
        Image.fromarray(label).save(root / label_rel)
        rows.append(
            {
                "dataset": name,
                "split": "train",
                "image": image_rel,
                "label": label_rel,
                "height": size[0],
                "width": size[1],
                "class_pixels": np.bincount(label.ravel(), minlength=19)[:19].tolist(),
                "label_sha256": sha256_file(root / label_rel),
            }
        )
    return write_manifest(manifest_path(root, name, "train"), rows)


@pytest.fixture
def augment() -> TrainTransform:
    return TrainTransform(TrainTransformConfig(base_size=12, crop_size=(8, 8)))


def test_items_have_the_documented_types(tmp_path: Path, augment: TrainTransform) -> None:
    dataset = SegmentationDataset(_manifest(tmp_path, "a", 3), augment)
    item = dataset[1]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert item["label"].shape == (8, 8) and item["label"].dtype == torch.int64
    assert (item["name"], item["dataset"]) == ("001", "a")
    with pytest.raises(IndexError):
        dataset[3]


def test_concatenates_manifests_in_order(tmp_path: Path) -> None:
    dataset = SegmentationDataset(
        [_manifest(tmp_path, "a", 3), _manifest(tmp_path, "bb", 2)], EvalTransform()
    )
    assert len(dataset) == 5
    assert [dataset[i]["dataset"] for i in range(5)] == ["a", "a", "a", "bb", "bb"]
    assert [dataset[i]["name"] for i in range(5)] == ["000", "001", "002", "000", "001"]
    image, label = _pair(12, 16, seed=1 + 200)
    torch.testing.assert_close(dataset[4]["image"], _normalised(image))
    assert torch.equal(dataset[4]["label"], torch.from_numpy(label).long())


def _rows(dataset: SegmentationDataset, stem: str) -> list[int]:
    return [item.row for item in dataset.kept if item.manifest.stem == stem]


def test_each_manifest_draws_its_own_seeded_subset(tmp_path: Path) -> None:
    a, bb, ccc = _manifest(tmp_path, "a", 6), _manifest(tmp_path, "bb", 5), _manifest(tmp_path, "ccc", 4)
    subset = {"a_train": 3, "ccc_train": 2}
    first = SegmentationDataset([a, bb, ccc], EvalTransform(), subset=subset, seed=3)
    assert len(first) == 3 + 5 + 2
    assert [item.manifest for item in first.kept] == [a] * 3 + [bb] * 5 + [ccc] * 2  # concatenation order
    assert _rows(first, "bb_train") == [0, 1, 2, 3, 4]  # not named: whole
    for stem, count in (("a_train", 6), ("ccc_train", 4)):  # the documented draw, rows ascending
        drawn = np.random.default_rng([3, *stem.encode()]).choice(count, subset[stem], replace=False)
        assert _rows(first, stem) == sorted(drawn.tolist())
    for position, item in enumerate(first.kept):
        assert first[position]["name"] == item.sample.image.stem == f"{item.row:03d}"
        assert first[position]["dataset"] == item.sample.dataset == item.manifest.stem.removesuffix("_train")
    again = SegmentationDataset([a, bb, ccc], EvalTransform(), subset=subset, seed=3)
    assert again.kept == first.kept
    alone = SegmentationDataset([ccc, a], EvalTransform(), subset={"a_train": 3}, seed=3)
    assert _rows(alone, "a_train") == _rows(first, "a_train")  # independent of the other manifests
    draws = {tuple(_rows(SegmentationDataset(a, EvalTransform(), subset={"a_train": 3}, seed=s), "a_train"))
             for s in range(8)}  # fmt: skip
    assert len(draws) > 1  # the seed matters


def test_subset_errors_name_the_stem_and_the_sizes(tmp_path: Path) -> None:
    a = _manifest(tmp_path, "a", 6)
    with pytest.raises(ValueError, match=r"subset names \['b_train'\].*stems are \['a_train'\]"):
        SegmentationDataset(a, EvalTransform(), subset={"b_train": 1})
    with pytest.raises(ValueError, match=r"subset a_train=7 asks for more than the 6 samples.*at most 6"):
        SegmentationDataset(a, EvalTransform(), subset={"a_train": 7})
    with pytest.raises(ValueError, match=r"subset.a_train must be an integer >= 1.*got 0"):
        SegmentationDataset(a, EvalTransform(), subset={"a_train": 0})
    twin = _manifest(tmp_path / "twin", "a", 2)
    with pytest.raises(ValueError, match=r"subset.a_train is ambiguous: 2 training manifests"):
        SegmentationDataset([a, twin], EvalTransform(), subset={"a_train": 1})
    assert len(SegmentationDataset([a, twin], EvalTransform())) == 8  # same stems are fine without a subset


def test_data_config_checks_subset_keys_before_any_manifest_is_read() -> None:
    train = ("data/a_train.parquet", "data/b_train.parquet")
    assert DataConfig(train=train, subset={"a_train": 12403}).subset == {"a_train": 12403}
    for subset, error, message in (
        (12403, TypeError, r"data.subset must map training manifest stems to sample counts.*got 12403"),
        ({"c_train": 5}, ValueError, r"data.subset names \['c_train'\].*stems are \['a_train', 'b_train'\]"),
        ({"b_train": True}, ValueError, r"data.subset.b_train must be an integer >= 1.*got True"),
    ):
        with pytest.raises(error, match=message):
            DataConfig(train=train, subset=subset)


def test_kept_samples_are_recorded_as_parquet(tmp_path: Path) -> None:
    a, bb = _manifest(tmp_path, "a", 6), _manifest(tmp_path, "bb", 2)
    dataset = SegmentationDataset([a, bb], EvalTransform(), subset={"a_train": 2}, seed=1)
    table = pq.read_table(write_kept_samples(tmp_path / "out" / "kept.parquet", dataset.kept))
    assert table.schema == KEPT_SCHEMA
    assert table.to_pylist() == [
        {"manifest": str(m.manifest), "row": m.row, "name": f"{m.row:03d}", "image": str(m.sample.image)}
        for m in dataset.kept
    ]
    assert table.column("manifest").to_pylist() == [str(a)] * 2 + [str(bb)] * 2


def test_augmentation_depends_on_seed_epoch_index_only(tmp_path: Path, augment: TrainTransform) -> None:
    dataset = SegmentationDataset(_manifest(tmp_path, "a", 4), augment, seed=1)
    epoch0 = [dataset[i]["image"] for i in range(4)]
    assert all(torch.equal(a, dataset[i]["image"]) for i, a in enumerate(epoch0))
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i]["image"]) for i, a in enumerate(epoch0))
    dataset.set_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(batches, torch.stack(epoch0))


def test_label_size_mismatch_names_the_file(tmp_path: Path) -> None:
    dataset = SegmentationDataset(_manifest(tmp_path, "a", 3, bad=2), EvalTransform())
    dataset[1]
    with pytest.raises(ValueError, match=r"a/labels/002\.png is 14x12 but image .*002\.png is 16x12"):
        dataset[2]


def test_a_truncated_image_names_its_file_and_dataset(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "a", 2)
    image = tmp_path / "a/images/001.png"
    image.write_bytes(image.read_bytes()[:-40])  # cut inside the pixel data
    dataset = SegmentationDataset(manifest, EvalTransform())
    dataset[0]
    with pytest.raises(ValueError, match=r"cannot read a sample of dataset 'a' \(.*a/images/001\.png.*truncated"):
        dataset[1]


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    empty = write_manifest(tmp_path / "empty.parquet", [])
    with pytest.raises(ValueError, match="no samples"):
        SegmentationDataset(empty, EvalTransform())
    with pytest.raises(ValueError, match="no manifest"):
        SegmentationDataset([], EvalTransform())
