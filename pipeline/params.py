"""``params.yaml`` of the DVC pipeline: every section typed and validated before any stage does work.

Sections: ``base`` (seed), ``datasets`` (what the ``data`` stage produces), ``data``, ``model``, ``train``,
``eval`` (:func:`recyclelora.config.run_config`), ``export`` and ``track``. An unknown section or key, or a refused
value, raises :class:`~recyclelora.config.ParamsError` naming it (``params.model.adapter: AdapterConfig.init
must be one of [...], got 'x'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recyclelora.config import ParamsError, RunConfig, build_config, read_params, run_config
from recyclelora.data.custom_config import CustomDatasetConfig, check_custom_name
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.data.synth_config import SynthConfig
from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

SECTIONS: tuple[str, ...] = ("base", "datasets", "data", "model", "train", "eval", "export", "track")
#: int8 copies the export stage can write (``recyclelora.export.QUANT_MODES``, which imports torch).
Int8Mode = Literal["static", "dynamic"]
#: Datasets ``recyclelora.data.download.download_dataset`` can fetch (GTAV publicly, Cityscapes with a login).
DOWNLOADABLE: tuple[str, ...] = ("gta5", "cityscapes")


@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = field(
        default=0,
        metadata={"help": "seeds training (train.seed): data order, augmentation, random inits", "ge": 0},
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class DatasetsConfig:
    """Stage ``data``: what is generated or prepared into data/prepared (manifests
    ``<dataset>_<split>.parquet``): the embedded benchmark and/or real datasets."""

    synth: SynthConfig | None = field(
        default_factory=SynthConfig,
        metadata={"help": "the embedded benchmark (procedural street scenes); null = none"},
    )
    synth_seed: int = field(
        default=0, metadata={"help": "seed of the benchmark's scenes, independent of base.seed", "ge": 0}
    )
    real: dict[str, str | None] = field(
        default_factory=dict,
        metadata={
            "help": f"real datasets, {{name: raw folder as distributed}}: {', '.join(RAW_DATASETS)}; null "
            f"downloads it ({', '.join(DOWNLOADABLE)})"
        },
    )
    custom: dict[str, CustomDatasetConfig] = field(
        default_factory=dict,
        metadata={
            "help": "your own datasets, {name: {root, classes, label_map, splits, images, labels, ...}} "
            "(docs/custom-data.md); each split becomes <name>_<split>.parquet"
        },
    )
    download_dir: str = field(
        default="data/downloads", metadata={"help": "where downloaded archives are kept and unpacked"}
    )
    workers: int | None = field(
        default=None, metadata={"help": "processes generating/preparing the data; null = all cores", "ge": 1}
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.synth is None and not self.real and not self.custom:
            raise InvalidInputError(
                "synth is null and real and custom are empty: the pipeline needs at least one dataset"
            )
        unknown = sorted(set(self.real) - set(RAW_DATASETS))
        if unknown:
            raise InvalidInputError(f"real names unknown dataset(s) {unknown}: choose from {list(RAW_DATASETS)}")
        for name in self.custom:
            check_custom_name(name)
        if self.synth is not None:
            clash = sorted(set(self.custom) & set(self.synth.splits()))
            if clash:
                raise InvalidInputError(f"custom names {clash} are benchmark domains: name your datasets otherwise")
        fetch = sorted(name for name, raw in self.real.items() if raw is None and name not in DOWNLOADABLE)
        if fetch:
            raise InvalidInputError(
                f"real: {fetch} cannot be downloaded (only {list(DOWNLOADABLE)} can): give the folder of the "
                "unpacked download as its value"
            )


@dataclass(frozen=True)
class ExportConfig:
    """Stage ``export``: ONNX of the merged model, checked against PyTorch."""

    height: int = field(
        default=512,
        metadata={"help": "fixed input height of the exported model, e.g. the sliding window's", "ge": 1},
    )
    width: int = field(default=512, metadata={"help": "fixed input width of the exported model", "ge": 1})
    opset: int = field(default=18, metadata={"help": "ONNX opset", "ge": 1})
    rtol: float = field(
        default=1e-3, metadata={"help": "largest max|onnx - torch| / max|torch| accepted", "gt": 0}
    )
    min_agreement: float = field(
        default=0.999,
        metadata={"help": "smallest share of pixels with the same argmax in both", "gt": 0, "le": 1},
    )
    int8: Int8Mode | None = field(
        default=None,
        metadata={
            "help": "also write an int8 copy (models/onnx/model.int8.onnx) by onnxruntime's quantization: static "
            "(calibrated on data.train, the source domain), dynamic, or null = none"
        },
    )
    int8_windows: int = field(
        default=64, metadata={"help": "windows of the export size that calibrate static int8", "ge": 1}
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class TrackConfig:
    """Stage ``package``: the merged model as an MLflow model (models/mlflow_model), logged with evaluate's
    scores."""

    register_model: bool = field(
        default=False,
        metadata={
            "help": "also register the model as models:/recyclelora-<run name> (e.g. rrqr-16+4-vits14-s0), "
            "the version tagged with its runs and key params"
        },
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class PipelineParams:
    """The validated ``params.yaml``; ``raw`` keeps the parsed file for logging what a stage read."""

    base: BaseConfig
    datasets: DatasetsConfig
    run: RunConfig
    export: ExportConfig
    track: TrackConfig
    raw: dict[str, Any]

    def sections(self, *names: str) -> dict[str, Any]:
        """The parsed sections ``names`` (a dotted name such as ``model.adapter`` picks a subsection)."""
        picked: dict[str, Any] = {}
        for name in names:
            value: Any = self.raw
            for key in name.split("."):
                value = value.get(key, {}) if isinstance(value, dict) else {}
            picked[name] = value
        return picked


def load_pipeline_params(path: str | Path) -> PipelineParams:
    """Read and validate every section of ``params.yaml`` (an invalid key fails here, before any work)."""
    path = Path(path)
    raw = read_params(path)
    run = run_config(raw, path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"unknown section(s) {unknown} in {path}: allowed sections are {list(SECTIONS)}")
    if not run.eval.targets:
        raise ParamsError("params.eval.targets is empty: list the manifests of the target domains to score")
    return PipelineParams(
        base=build_config(BaseConfig, raw.get("base") or {}, "params.base"),
        datasets=build_config(DatasetsConfig, raw.get("datasets") or {}, "params.datasets"),
        run=run,
        export=build_config(ExportConfig, raw.get("export") or {}, "params.export"),
        track=build_config(TrackConfig, raw.get("track") or {}, "params.track"),
        raw=raw,
    )
