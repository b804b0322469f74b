from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels

from recyclelora.data import labelmaps
from recyclelora.data.labelmaps import LabelMap, load_label_map, mapillary_label_map
from tests.data.conftest import MAPILLARY_NAMES, MAPILLARY_PAIRS, SYNTHIA_PAIRS


def official_trainid(label_id: int) -> int:
    (label,) = [label for label in cityscapes_labels if label.id == label_id]
    return 255 if label.trainId in (-1, 255) else label.trainId


@pytest.mark.parametrize("label_map", [labelmaps.CITYSCAPES, labelmaps.GTA5])
def test_cityscapes_ids_follow_the_official_table(label_map: LabelMap) -> None:
    ids = np.arange(34, dtype=np.uint8)
    assert label_map(ids).tolist() == [official_trainid(i) for i in range(34)]
    assert label_map.unknown_values(ids).size == 0
    assert label_map.unknown_values(np.array([34, 200], dtype=np.uint8)).tolist() == [34, 200]


def test_gta5_accepts_255_and_cityscapes_does_not() -> None:
    values = np.array([255], dtype=np.uint8)
    assert labelmaps.GTA5(values).tolist() == [255]
    assert labelmaps.GTA5.unknown_values(values).size == 0
    assert labelmaps.CITYSCAPES.unknown_values(values).tolist() == [255]


def test_synthia_reads_16_bit_ids() -> None:
    ids = np.array(list(SYNTHIA_PAIRS) + [23, 300, 65535], dtype=np.uint16)
    assert labelmaps.SYNTHIA(ids).tolist() == list(SYNTHIA_PAIRS.values()) + [255, 255, 255]
    assert labelmaps.SYNTHIA.unknown_values(ids).tolist() == [23, 300, 65535]
    assert not {9, 14, 16} & set(labelmaps.SYNTHIA(ids).tolist())  # terrain, truck, train never occur


@pytest.mark.parametrize(
    ("label_map", "void", "unknown"),
    [(labelmaps.URBANSYN, 19, 255), (labelmaps.BDD100K, 255, 19), (labelmaps.ACDC, 255, 19)],
)
def test_trainid_datasets_are_identity(label_map: LabelMap, void: int, unknown: int) -> None:
    values = np.array([*range(19), void], dtype=np.uint8)
    assert label_map(values).tolist() == [*range(19), 255]
    assert label_map.unknown_values(np.array([*values, unknown], dtype=np.uint8)).tolist() == [unknown]


def write_config(path: Path, names: list[str]) -> Path:
    path.write_text(json.dumps({"labels": [{"readable": n, "name": n.lower()} for n in names]}))
    return path


def test_mapillary_maps_by_class_name_not_index(tmp_path: Path) -> None:
    label_map = mapillary_label_map(write_config(tmp_path / "config_v1.2.json", MAPILLARY_NAMES))
    values = np.arange(len(MAPILLARY_NAMES), dtype=np.uint8)
    assert label_map(values).tolist() == [MAPILLARY_PAIRS[i] for i in range(len(MAPILLARY_NAMES))]
    assert label_map.unknown_values(np.array([len(MAPILLARY_NAMES)], dtype=np.uint8)).size == 1


def test_mapillary_rejects_another_class_list(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config_v2.0.json", [n for n in MAPILLARY_NAMES if n != "On Rails"])
    with pytest.raises(ValueError, match=r"missing \['On Rails'\].*config_v1\.2\.json"):
        mapillary_label_map(config)


def test_load_label_map_needs_the_mapillary_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config_v1.2.json.*mapillary.com"):
        load_label_map("mapillary", tmp_path)
    assert load_label_map("gta5", tmp_path) is labelmaps.GTA5


def test_label_map_rejects_non_trainids() -> None:
    lut = np.full(256, 255, dtype=np.uint8)
    lut[3] = 30
    with pytest.raises(ValueError, match=r"lut holds \[30\]"):
        LabelMap("broken", lut, np.ones(256, dtype=bool))
