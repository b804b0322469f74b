"""Your own data through the pipeline: train on folder A (5 classes of raw mask values), score on folder B (the
same classes) and folder C (colour masks naming 3 of them, in another order), by ``dvc repro``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.params import load_pipeline_params
from pipeline.presets import apply_preset
from pipeline.stages.data import check_manifests
from recyclelora.data.manifest import read_classes
from recyclelora.errors import InvalidInputError
from recyclelora.eval.predictors import OnnxPredictor
from recyclelora.models.checkpoint import read_checkpoint_info
from tests.pipeline.test_dvc import ENV_DROPPED, MODULES, run
from tests.pipeline.workspace import GIT, tiny_repo

CLASSES = ["soil", "crop", "weed", "water", "sky"]
VALUES = {0: "soil", 10: "crop", 20: "weed", 30: "water", 40: "sky", 255: "ignore"}
#: Folder C's colours: three of the training classes, listed in another order than training's.
COLOURS = {"#0000ff": "sky", "#00ff00": "crop", "#804000": "soil", "#000000": "ignore"}
SIZE = (28, 56)  # (h, w)


def _bands(rng: np.random.Generator) -> np.ndarray:
    """A scene of horizontal bands of class ids 0..4 (sky on top), with an ignored strip."""
    ids = np.repeat(np.array([4, 1, 2, 3, 0])[:, None], SIZE[0] // 5 + 1, axis=1).ravel()[: SIZE[0]]
    ids = np.roll(ids, int(rng.integers(0, 3)))
    scene = np.repeat(ids[:, None], SIZE[1], axis=1)
    scene[:, :2] = 255
    return scene


def _image(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colours = np.array([(120, 90, 40), (40, 160, 40), (90, 200, 60), (30, 60, 200), (150, 190, 240)])
    lut = np.zeros((256, 3)) + 128
    lut[:5] = colours
    return (lut[scene] + rng.normal(0, 8, (*SIZE, 3))).clip(0, 255).astype(np.uint8)


def write_folders(root: Path) -> None:
    """A (train and val, masks of raw values), B (val, raw values), C (val, colour masks, 3 classes)."""
    rng = np.random.default_rng(0)
    raw_of_id = {i: v for v, i in ((v, CLASSES.index(n)) for v, n in VALUES.items() if n != "ignore")}
    raw_of_id[255] = 255
    for folder, splits in (("fields", {"train": 6, "val": 2}), ("farm_b", {"": 2})):
        for split, count in splits.items():
            for index in range(count):
                scene = _bands(rng)
                (root / folder / "images" / split).mkdir(parents=True, exist_ok=True)
                (root / folder / "masks" / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(_image(scene, rng)).save(root / folder / "images" / split / f"f{index}.png")
                mask = np.vectorize(raw_of_id.get)(scene).astype(np.uint8)
                Image.fromarray(mask).save(root / folder / "masks" / split / f"f{index}_mask.png")
    rgb = {
        CLASSES.index(n): tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))
        for c, n in COLOURS.items()
        if n != "ignore"
    }
    for index in range(2):
        scene = _bands(rng)
        scene[np.isin(scene, [2, 3])] = 255  # C labels no weed and no water
        (root / "farm_c" / "images").mkdir(parents=True, exist_ok=True)
        (root / "farm_c" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(scene, rng)).save(root / "farm_c" / "images" / f"c{index}.png")
        mask = np.zeros((*SIZE, 3), np.uint8)
        for class_id, colour in rgb.items():
            mask[scene == class_id] = colour
        Image.fromarray(mask).save(root / "farm_c" / "masks" / f"c{index}.png")


def overlay() -> dict:
    """params.yaml settings: the three folders as custom datasets, trained on A, scored on B and C."""
    values = {"classes": CLASSES, "label_map": VALUES, "label_suffix": "_mask.png"}
    return {
        "datasets": {
            "synth": None,
            "custom": {
                "fields": {
                    "root": "raw/fields",
                    "splits": {"train": "train", "val": "val"},
                    "images": "images/{split}/*.png",
                    "labels": "masks/{split}/*.png",
                    **values,
                },
                "farm_b": {
                    "root": "raw/farm_b",
                    "splits": {"val": ""},
                    "images": "images/*.png",
                    "labels": "masks/*.png",
                    **values,
                },
                "farm_c": {
                    "root": "raw/farm_c",
                    "splits": {"val": ""},
                    "images": "images/*.png",
                    "labels": "masks/*.png",
                    "classes": ["sky", "crop", "soil"],
                    "label_map": COLOURS,
                },
            },
        },
        "data": {
            "train": ["data/prepared/fields_train.parquet"],
            "val": ["data/prepared/fields_val.parquet"],
        },
        "eval": {"targets": ["data/prepared/farm_b_val.parquet", "data/prepared/farm_c_val.parquet"]},
    }


def test_a_target_with_a_class_the_model_never_learns_is_refused_before_any_work(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).parents[2] / "params.yaml").read_text())
    settings = overlay()
    settings["datasets"]["custom"]["farm_c"]["classes"] = ["sky", "crop", "rock"]
    settings["datasets"]["custom"]["farm_c"]["label_map"] = {
        "#0000ff": "sky",
        "#00ff00": "crop",
        "#804000": "rock",
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(settings))
    apply_preset(params, str(tmp_path / "bad.yaml"))
    with pytest.raises(InvalidInputError, match=r"farm_c_val.parquet: classes \['rock'\] are not among"):
        check_manifests(load_pipeline_params(params), Path("data/prepared"))
    settings["data"]["val"] = ["data/prepared/farm_c_val.parquet"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(settings))
    apply_preset(params, str(tmp_path / "bad.yaml"))
    with pytest.raises(InvalidInputError, match="data.train and data.val mix class sets"):
        check_manifests(load_pipeline_params(params), Path("data/prepared"))


@pytest.mark.slow
def test_dvc_repro_trains_on_my_folder_and_scores_my_other_folders(tmp_path: Path) -> None:
    repo = tiny_repo(tmp_path / "repo")
    write_folders(repo / "raw")
    (repo / "custom.yaml").write_text(yaml.safe_dump(overlay()))
    apply_preset(repo / "params.yaml", str(repo / "custom.yaml"))
    run(GIT + ["add", "-A"], repo, dict(os.environ))
    run(GIT + ["commit", "-q", "-m", "my data"], repo, dict(os.environ))
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED} | {"DVC_NO_ANALYTICS": "1"}

    out = run(["dvc", "repro"], repo, env)
    assert all(f"Running stage '{name}'" in out for name in MODULES)

    prepared = repo / "data" / "prepared"
    assert read_classes(prepared / "fields_train.parquet").names == tuple(CLASSES)
    assert read_classes(prepared / "farm_c_val.parquet").names == ("sky", "crop", "soil")
    # the head, the merged model and the ONNX export follow the data's 5 classes
    merged = read_checkpoint_info(repo / "models" / "merged.safetensors")
    assert merged.config.head.num_classes == 5 and merged.classes.names == tuple(CLASSES)
    assert OnnxPredictor(repo / "models" / "onnx" / "model.onnx").classes.names == tuple(CLASSES)

    scores = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(scores) >= {"farm_b_val", "farm_c_val"}
    table = pq.read_table(repo / "reports" / "eval" / "per_class.parquet").to_pylist()
    assert {row["class_name"] for row in table} == set(CLASSES)
    # C's own ids (sky 0, crop 1, soil 2) were scored as the model's (sky 4, crop 1, soil 0), by name
    labelled = {row["class_name"]: row["tp"] + row["fn"] for row in table if row["dataset"] == "farm_c_val"}
    assert labelled["weed"] == labelled["water"] == 0
    assert min(labelled["sky"], labelled["crop"], labelled["soil"]) > 0
