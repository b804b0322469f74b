"""The real DGSS datasets as their owners distribute them (layouts from the dataset table of the docs)."""

from __future__ import annotations

from recyclelora.data.raw.layout import FileSet, RawDataset, read_index_png, read_red_channel_png16

#: Where ``recyclelora-cli data download gta5`` fetches the GTAV zips (``--base-url`` overrides it).
GTA5_URL = "https://download.visinf.tu-darmstadt.de/data/from_games/data/"

GTA5 = RawDataset(
    name="gta5",
    source="the 'Playing for Data' page of TU Darmstadt (download.visinf.tu-darmstadt.de/data/from_games/, "
    "10 image and 10 label zips; `recyclelora-cli data download gta5` fetches them)",
    splits={"train": ""},
    images=FileSet("images", "*.png", (".png",)),
    labels=FileSet("labels", "*.png", (".png",)),
)

SYNTHIA = RawDataset(
    name="synthia",
    source="the SYNTHIA site (synthia-dataset.net, subset SYNTHIA-RAND-CITYSCAPES, after filling in its form)",
    splits={"train": ""},
    images=FileSet("RGB", "*.png", (".png",)),
    labels=FileSet("GT/LABELS", "*.png", (".png",)),
    read_label=read_red_channel_png16,
)

URBANSYN = RawDataset(
    name="urbansyn",
    source="the UrbanSyn site (www.urbansyn.org, after accepting its licence)",
    splits={"train": ""},
    images=FileSet("rgb", "*.png", (".png",), prefix="rgb_"),
    labels=FileSet("ss", "*.png", (".png",), prefix="ss_"),
)

CITYSCAPES = RawDataset(
    name="cityscapes",
    source="the Cityscapes site (www.cityscapes-dataset.com, registration; packages leftImg8bit_trainvaltest.zip "
    "and gtFine_trainvaltest.zip; `recyclelora-cli data download cityscapes` fetches them with "
    "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD set)",
    splits={"train": "train", "val": "val"},
    images=FileSet("leftImg8bit/{split}", "*/*_leftImg8bit.png", ("_leftImg8bit.png",)),
    labels=FileSet("gtFine/{split}", "*/*_gtFine_labelIds.png", ("_gtFine_labelIds.png",)),
)

BDD100K = RawDataset(
    name="bdd100k",
    source="the BDD100K download portal (bdd-data.berkeley.edu, registration; the '10K Images' and "
    "'Segmentation' packages)",
    splits={"train": "train", "val": "val"},
    images=FileSet("images/10k/{split}", "*.jpg", (".jpg",)),
    labels=FileSet("labels/sem_seg/masks/{split}", "*.png", ("_train_id.png", ".png")),
)

MAPILLARY = RawDataset(
    name="mapillary",
    source="the Mapillary Vistas page (www.mapillary.com/dataset/vistas, registration; the v1.2 labels and "
    "config_v1.2.json ship with v1.2 and v2.0)",
    splits={"train": "training", "val": "validation"},
    images=FileSet("{split}/images", "*.jpg", (".jpg",)),
    labels=FileSet("{split}/v1.2/labels", "*.png", (".png",)),
)

ACDC = RawDataset(
    name="acdc",
    source="the ACDC site (acdc.vision.ee.ethz.ch, registration; rgb_anon_trainvaltest.zip and gt_trainval.zip)",
    splits={"train": "train", "val": "val"},
    images=FileSet("rgb_anon", "*/{split}/*/*_rgb_anon.png", ("_rgb_anon.png",)),
    labels=FileSet("gt", "*/{split}/*/*_gt_labelTrainIds.png", ("_gt_labelTrainIds.png",)),
)

RAW_DATASETS: dict[str, RawDataset] = {
    d.name: d for d in (GTA5, SYNTHIA, URBANSYN, CITYSCAPES, BDD100K, MAPILLARY, ACDC)
}

__all__ = ["GTA5_URL", "RAW_DATASETS", "FileSet", "RawDataset", "read_index_png", "read_red_channel_png16"]
