"""Custom datasets: pairing by name pattern or list file, grey and colour masks, class sets in manifests,
bad input reported or refused, and an edited label map writing the labels again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from recyclelora.cli.main import app
from recyclelora.config import ParamsError, build_config
from recyclelora.data.classes import ClassSet
from recyclelora.data.custom_config import CustomDatasetConfig
from recyclelora.data.manifest import (
    common_classes,
    manifest_path,
    read_classes,
    read_manifest,
    write_manifest,
)
from recyclelora.data.prepare import PrepareResult, prepare_dataset
from recyclelora.data.report import BadDataError, Problem
from recyclelora.errors import InvalidInputError

H, W = 8, 12
CLASSES = ["soil", "crop", "weed", "water", "sky"]
LABEL_MAP: dict[int | str, str] = {0: "soil", 10: "crop", 20: "weed", 30: "water", 40: "sky", 255: "ignore"}
IDS = {0: 0, 10: 1, 20: 2, 30: 3, 40: 4, 255: 255}  # raw value -> class id under LABEL_MAP
COUNTS = {0: 30, 10: 20, 20: 15, 30: 10, 40: 5, 255: 16}  # pixels per raw value of every mask (96 = 8 x 12)
COLOURS = {"#00ff00": "crop", "#000000": "soil", "#ff0000": "weed", "#0000ff": "water", "#ffffff": "sky"}


def config(root: Path, **settings: Any) -> CustomDatasetConfig:
    """A custom dataset entry built as params.yaml's ``datasets.custom.fields`` would be."""
    mapping = {"root": str(root), "classes": CLASSES, "label_map": dict(LABEL_MAP), **settings}
    return build_config(CustomDatasetConfig, mapping, "datasets.custom.fields")


def raw_mask(seed: int = 0, counts: dict[int, int] = COUNTS) -> np.ndarray:
    flat = np.repeat(list(counts), list(counts.values())).astype(np.uint8)
    return np.random.default_rng(seed).permutation(flat).reshape(H, W)


def write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def image(path: Path, size: tuple[int, int] = (H, W)) -> Path:
    return write(path, np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))


def prepare(root: Path, out: Path, cfg: CustomDatasetConfig, **kwargs: Any) -> PrepareResult:
    return prepare_dataset("fields", root, out, workers=1, custom=cfg, **kwargs)


def label_ids(out: Path, split: str, key: str) -> np.ndarray:
    return np.asarray(Image.open(out / f"labels/fields/{split}/{key}.png"))


def problems(result: PrepareResult) -> dict[str, tuple[Problem, str]]:
    """Skipped file name -> (problem, detail)."""
    return {Path(r.file).name: (r.problem, r.detail) for r in result.bad.records}


def test_pairs_by_name_pattern_and_records_the_class_set(tmp_path: Path) -> None:
    """Images pair with ``<key>_mask.png`` per {split} folder; labels hold class ids; the manifest names the
    five classes and counts each one's pixels."""
    root, out = tmp_path / "raw", tmp_path / "out"
    masks = {("tr", "a"): raw_mask(0), ("tr", "b"): raw_mask(1), ("va", "c"): raw_mask(2)}
    for (folder, key), mask in masks.items():
        image(root / f"images/{folder}/{key}.png")
        write(root / f"masks/{folder}/{key}_mask.png", mask)
    cfg = config(
        root, splits={"train": "tr", "val": "va"}, labels="masks/{split}/*.png", label_suffix="_mask.png"
    )
    result = prepare(root, out, cfg)
    assert result.bad.records == []
    for split, folder, keys in (("train", "tr", ["a", "b"]), ("val", "va", ["c"])):
        samples = read_manifest(manifest_path(out, "fields", split))
        assert [(s.image, s.label) for s in samples] == [
            ((root / f"images/{folder}/{k}.png").resolve(), out / f"labels/fields/{split}/{k}.png")
            for k in keys
        ]
        for sample, key in zip(samples, keys, strict=True):
            expected = np.vectorize(IDS.__getitem__, otypes=[np.uint8])(masks[(folder, key)])
            np.testing.assert_array_equal(label_ids(out, split, key), expected)
            assert (sample.height, sample.width) == (H, W)
            assert sample.class_pixels == (30, 20, 15, 10, 5)
        assert read_classes(manifest_path(out, "fields", split)).names == tuple(CLASSES)


def test_pairs_by_list_file(tmp_path: Path) -> None:
    """A list file pairs its lines (comments skipped); a listed mask that is missing makes its image a
    missing partner; a line without two paths is an error naming the line."""
    root, out = tmp_path / "raw", tmp_path / "out"
    for key in ("a", "b"):
        image(root / f"img/{key}.png")
    write(root / "ann/a.png", raw_mask())
    (root / "train.txt").write_text("# image mask\nimg/a.png ann/a.png\n\nimg/b.png ann/b.png\n")
    result = prepare(root, out, config(root, lists={"train": "train.txt"}))
    (sample,) = read_manifest(manifest_path(out, "fields", "train"))
    assert sample.image == (root / "img/a.png").resolve() and sample.class_pixels == (30, 20, 15, 10, 5)
    assert sample.label == out / "labels/fields/train/img/a.png"
    ((name, (problem, detail)),) = problems(result).items()
    assert (name, problem) == ("b.png", Problem.MISSING_PARTNER) and "key 'img/b'" in detail
    (root / "train.txt").write_text("img/a.png ann/a.png\n# fine\nimg/b.png\n")
    with pytest.raises(
        InvalidInputError, match=r"train\.txt line 3: expected 'image mask', got 'img/b\.png'"
    ):
        prepare(root, out, config(root, lists={"train": "train.txt"}))


def colour_mask(ids: np.ndarray) -> np.ndarray:
    """An RGB mask painting class id ``i`` in the colour COLOURS gives class ``CLASSES[i]``."""
    by_class = {cls: [int(key[i : i + 2], 16) for i in (1, 3, 5)] for key, cls in COLOURS.items()}
    table = np.array([by_class[cls] for cls in CLASSES], dtype=np.uint8)
    return table[ids]


@pytest.mark.parametrize("unknown", ["error", "ignore"])
def test_colour_masks(tmp_path: Path, unknown: str) -> None:
    """RGB masks map each colour to its class id; a colour outside the map skips the pair (named in the
    report), or with ``unknown: ignore`` becomes 255."""
    root, out = tmp_path / "raw", tmp_path / "out"
    ids = np.random.default_rng(0).integers(0, len(CLASSES), (H, W)).astype(np.uint8)
    stray = colour_mask(ids)
    stray[0, :3] = (0x12, 0x34, 0x56)
    for key, mask in (("a", colour_mask(ids)), ("b", stray)):
        image(root / f"images/{key}.png")
        write(root / f"labels/{key}.png", mask)
    cfg = config(root, label_map=COLOURS, unknown=unknown)
    assert cfg.by_colour
    result = prepare(root, out, cfg)
    np.testing.assert_array_equal(label_ids(out, "train", "a"), ids)
    if unknown == "error":
        problem, detail = problems(result)["b.png"]
        assert problem is Problem.UNKNOWN_VALUE and "#123456" in detail
        assert [s.label.name for s in read_manifest(manifest_path(out, "fields", "train"))] == ["a.png"]
    else:
        assert result.bad.records == []
        expected = ids.copy()
        expected[0, :3] = 255
        np.testing.assert_array_equal(label_ids(out, "train", "b"), expected)


def test_bad_pairs_are_reported_and_skipped(tmp_path: Path) -> None:
    """A mask value outside the map, an image without a mask and a mask of another size each skip their
    pair with the right problem; the good pair is kept; strict mode raises on the unknown value."""
    root, out = tmp_path / "raw", tmp_path / "out"
    for key in ("good", "value", "alone", "size"):
        image(root / f"images/{key}.png")
    write(root / "labels/good.png", raw_mask())
    write(root / "labels/value.png", raw_mask(counts={**COUNTS, 0: 29, 77: 1}))
    write(root / "labels/size.png", np.zeros((H, W + 1), dtype=np.uint8))
    result = prepare(root, out, config(root))
    found = problems(result)
    assert {name: problem for name, (problem, _) in found.items()} == {
        "value.png": Problem.UNKNOWN_VALUE,
        "alone.png": Problem.MISSING_PARTNER,
        "size.png": Problem.SIZE_MISMATCH,
    }
    assert "values [77] (1 pixels)" in found["value.png"][1]
    assert "label 13x8, image 12x8" in found["size.png"][1]
    assert [s.label.name for s in read_manifest(manifest_path(out, "fields", "train"))] == ["good.png"]
    for name in ("images/alone.png", "images/size.png", "labels/size.png"):
        (root / name).unlink()
    with pytest.raises(BadDataError, match="values \\[77\\]") as error:
        prepare(root, tmp_path / "strict", config(root), strict=True)
    assert error.value.record.problem is Problem.UNKNOWN_VALUE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"label_map": {**LABEL_MAP, 50: "tree"}}, r"maps onto \['tree'\], which are not in classes"),
        ({"label_map": {0: "soil", "#00ff00": "crop"}}, "mix mask values and colours"),
        ({"classes": [*CLASSES, "ignore"]}, "'ignore' is reserved"),
        ({"label_map": {"#00ff0": "crop"}}, "not colours"),
        ({"lists": {"val": "val.txt"}}, "lists names split"),
    ],
)
def test_bad_config_is_a_params_error(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    """Each inconsistent entry is refused when params are read, naming the entry and the problem."""
    with pytest.raises(ParamsError, match=message) as error:
        config(tmp_path, **settings)
    assert str(error.value).startswith("datasets.custom.fields: ")


@pytest.mark.parametrize("name", ["gta5", "my/fields", ""])
def test_custom_name_must_be_a_new_plain_name(tmp_path: Path, name: str) -> None:
    """A custom dataset may not take a public dataset's name, nor one that is not a file name."""
    with pytest.raises(InvalidInputError, match="public dataset's" if name == "gta5" else "letters, digits"):
        prepare_dataset(name, tmp_path, tmp_path / "out", custom=config(tmp_path))


def test_edited_label_map_rewrites_the_labels(tmp_path: Path) -> None:
    """A rerun with the same map reuses the labels; with 10 -> weed it writes them again with new ids."""
    root, out = tmp_path / "raw", tmp_path / "out"
    image(root / "images/a.png")
    write(root / "labels/a.png", mask := raw_mask())
    assert prepare(root, out, config(root)).splits[0].converted == 1
    assert prepare(root, out, config(root)).splits[0].reused == 1
    result = prepare(root, out, config(root, label_map={**LABEL_MAP, 10: "weed"}))
    assert (result.splits[0].converted, result.splits[0].reused) == (1, 0)
    np.testing.assert_array_equal(label_ids(out, "train", "a")[mask == 10], 2)
    np.testing.assert_array_equal(label_ids(out, "train", "a")[mask == 0], 0)
    (sample,) = read_manifest(manifest_path(out, "fields", "train"))
    assert sample.class_pixels == (30, 0, 35, 10, 5)


def test_onto_maps_ids_by_name() -> None:
    """Same names in the same order need no table; a reordered subset maps by name (255 stays 255); a
    class the training set lacks is refused."""
    training = ClassSet.of(CLASSES)
    assert ClassSet.of(CLASSES).onto(training) is None
    lut = ClassSet.of(["sky", "soil", "weed"]).onto(training)
    assert lut is not None and lut.shape == (256,)
    assert lut[:3].tolist() == [4, 0, 2] and (lut[3:] == 255).all()
    with pytest.raises(InvalidInputError, match=r"classes \['tree'\] are not among the model's 5"):
        ClassSet.of(["soil", "tree"]).onto(training)


def test_common_classes_refuses_mixed_class_sets(tmp_path: Path) -> None:
    """Manifests of one class set give it back; two different sets are an error naming both."""

    def manifest(name: str, classes: ClassSet) -> Path:
        row = {"dataset": name, "split": "train", "image": "i.png", "label": "l.png", "height": H, "width": W,
               "class_pixels": [1] * len(classes), "label_sha256": "0" * 64}  # fmt: skip
        return write_manifest(tmp_path / f"{name}.parquet", [row], classes)

    fields, other = ClassSet.of(CLASSES), ClassSet.of(["soil", "crop"])
    a, b, c = manifest("a", fields), manifest("b", fields), manifest("c", other)
    assert common_classes([a, b], "training data").names == tuple(CLASSES)
    with pytest.raises(InvalidInputError, match=r"training data mix class sets: .*\['soil', 'crop'\]"):
        common_classes([a, c], "training data")


def test_cli_prepare_custom(tmp_path: Path) -> None:
    """``data prepare NAME --custom FILE`` prepares the folder the file describes; without --raw or --custom,
    or with a label map onto an unknown class, it says so in one line and exits 1."""
    root = tmp_path / "raw"
    image(root / "images" / "a.png")
    write(root / "labels" / "a.png", raw_mask())
    spec = tmp_path / "fields.yaml"
    spec.write_text(yaml.safe_dump({"root": str(root), "images": "images/*.png", "labels": "labels/*.png",
                                    "classes": CLASSES, "label_map": dict(LABEL_MAP)}))  # fmt: skip
    out = tmp_path / "out"
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "prepare", "fields", "--custom", str(spec), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert read_classes(out / "fields_train.parquet").names == tuple(CLASSES)
    for args, message in (
        (["data", "prepare", "fields", "--out", str(out)], "give --raw"),
        (["data", "prepare", "fields", "--custom", str(tmp_path / "bad.yaml"), "--out", str(out)], "tree"),
    ):
        (tmp_path / "bad.yaml").write_text(spec.read_text().replace("crop", "tree", 1))
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
