"""Stage ``data``: generate the embedded benchmark and/or download and prepare real datasets, with manifests.

Everything lands in one folder (the stage's DVC output): ``<out>/<dataset>_<split>.parquet`` manifests, the
labels as class ids (trainIds for the public datasets and the benchmark, a custom dataset's own classes
otherwise) and, for the benchmark, its images. Raw downloads stay in ``datasets.download_dir``
(ignored by Git and DVC); they are inputs, never outputs. The SHA-256 of each GTAV zip, as published or as
recorded on its first download, is kept in the checksum file dvc.yaml passes, a second output that Git tracks.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import DatasetsConfig, PipelineParams
from pipeline.stages._common import log_numbers, open_stage, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.data.classes import CITYSCAPES_CLASSES, ClassSet, same_classes
from recyclelora.data.download import download_dataset
from recyclelora.data.manifest import manifest_path, read_manifest
from recyclelora.data.prepare import prepare_dataset
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.data.synth import generate_benchmark
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_dir, atomic_write_text

SUMMARY_FILE = "datasets.json"


def prepare_datasets(config: DatasetsConfig, out: Path, checksums: Path) -> dict[str, int]:
    """Write every dataset of ``config`` into ``out``; returns the sample count of each manifest by file name.

    A real dataset without a raw folder is downloaded (``download_dataset`` unpacks it into
    ``<download_dir>/raw/<name>``, checked against and recording into ``checksums``) and then prepared from
    there like any other raw folder.
    """
    if config.synth is not None:
        generate_benchmark(out, seed=config.synth_seed, config=config.synth, workers=config.workers)
    for name, raw in config.real.items():
        if raw is None:
            download_dataset(name, config.download_dir, checksums=checksums, workers=config.workers)
            raw = str(Path(config.download_dir) / "raw" / name)
        prepare_dataset(name, raw, out, workers=config.workers)
    for name, custom in config.custom.items():
        prepare_dataset(name, custom.root, out, workers=config.workers, custom=custom)
    return {path.name: len(read_manifest(path)) for path in sorted(out.glob("*.parquet"))}


def planned_manifests(config: DatasetsConfig) -> dict[str, ClassSet]:
    """File names of the manifests :func:`prepare_datasets` will write (``<dataset>_<split>.parquet``), each
    with the class set of its labels."""
    splits = (
        {domain: list(counts) for domain, counts in config.synth.splits().items()} if config.synth else {}
    )
    splits |= {name: list(RAW_DATASETS[name].splits) for name in config.real}
    classes = dict.fromkeys(splits, CITYSCAPES_CLASSES)
    for name, custom in config.custom.items():
        splits[name], classes[name] = list(custom.splits), custom.class_set()
    return {
        manifest_path("", name, split).name: classes[name]
        for name in sorted(splits)
        for split in splits[name]
    }


def check_manifests(params: PipelineParams, out: Path) -> None:
    """Raise unless every manifest that ``data.train``, ``data.val`` and ``eval.targets`` name is one the
    data stage writes into ``out``, training and validation share a class set and every target's classes are
    among them: run before any work."""
    produced = planned_manifests(params.datasets)
    wanted = {
        "data.train": params.run.data.train,
        "data.val": params.run.data.val,
        "eval.targets": params.run.eval.targets,
    }
    for key, paths in wanted.items():
        for path in map(Path, paths):
            if path.parent.resolve() != out.resolve() or path.name not in produced:
                raise InvalidInputError(
                    f"params.{key} names {path}, which the data stage does not produce: choose from "
                    f"{[(out / name).as_posix() for name in produced]} or add the dataset to params.datasets"
                )
    trained = {Path(p).name: produced[Path(p).name] for p in (*params.run.data.train, *params.run.data.val)}
    classes = same_classes(trained, "params.data.train and data.val")
    for target in params.run.eval.targets:
        try:
            produced[Path(target).name].onto(classes)
        except InvalidInputError as error:
            raise InvalidInputError(f"params.eval.targets: {Path(target).name}: {error}") from None


def run_data(params_path: Path, out: Path, checksums: Path) -> dict[str, int]:
    """The ``data`` stage: validate params, write ``out`` atomically, record counts and reports in MLflow.

    ``checksums`` is GTAV's checksum file (``sha256sum`` format), read and extended by every download: an
    output in dvc.yaml with ``cache: false`` (Git tracks it) and ``persist: true`` (DVC never deletes it).
    """
    with open_stage("data", params_path) as params:
        check_manifests(params, out)
        if not checksums.is_file():  # an output: it exists after every run, empty until a download
            atomic_write_text(checksums, "")
        with atomic_dir(out) as tmp:
            counts = prepare_datasets(params.datasets, tmp, checksums)
            write_json(tmp / SUMMARY_FILE, {"samples": counts})
        log_numbers({f"samples/{name.removesuffix('.parquet')}": count for name, count in counts.items()})
        log_small_artifacts(sorted(out.glob("*.json")))
    return counts
