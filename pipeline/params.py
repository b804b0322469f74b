"""``params.yaml`` of the DVC pipeline: every section typed and validated before any stage does work.

Sections: ``base`` (seed), ``datasets`` (what the ``data`` stage produces), ``data``, ``model``, ``train``,
``eval`` (:func:`recyclelora.config.run_config`), ``export`` and ``track``. An unknown section or key, or a refused
value, raises :class:`~recyclelora.config.ParamsError` naming it (``params.model.adapter: AdapterConfig.init
must be one of [...], got 'x'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recyclelora.config import ParamsError, RunConfig, build_config, read_params, run_config
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.data.synth_config import SynthConfig
from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

SECTIONS: tuple[str, ...] = ("base", "datasets", "data", "model", "train", "eval", "export", "track")
#: Datasets ``recyclelora.data.download.download_dataset`` can fetch (GTAV publicly, Cityscapes with a login).
DOWNLOADABLE: tuple[str, ...] = ("gta5", "cityscapes")


@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = field(
        default=0, metadata={"help": "seeds training: data order, augmentation, random inits", "ge": 0}
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class DatasetsConfig:
    """What the ``data`` stage writes into its output folder: the embedded benchmark and/or real datasets."""

    synth: SynthConfig | None = field(
        default_factory=SynthConfig, metadata={"help": "the embedded benchmark's size; null = none"}
    )
    synth_seed: int = field(
        default=0, metadata={"help": "seed of the benchmark's scenes (not base.seed)", "ge": 0}
    )
    real: dict[str, str | None] = field(
        default_factory=dict,
        metadata={"help": f"dataset name -> raw folder as distributed; null downloads it ({DOWNLOADABLE})"},
    )
    download_dir: str = field(
        default="data/downloads", metadata={"help": "where downloaded archives and raw files are kept"}
    )
    workers: int | None = field(
        default=None, metadata={"help": "processes for generation/preparation", "ge": 1}
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.synth is None and not self.real:
            raise InvalidInputError("synth is null and real is empty: the pipeline needs at least one dataset")
        unknown = sorted(set(self.real) - set(RAW_DATASETS))
        if unknown:
            raise InvalidInputError(f"real names unknown dataset(s) {unknown}: choose from {list(RAW_DATASETS)}")
        fetch = sorted(name for name, raw in self.real.items() if raw is None and name not in DOWNLOADABLE)
        if fetch:
            raise InvalidInputError(
                f"real: {fetch} cannot be downloaded (only {list(DOWNLOADABLE)} can): give the folder of the "
                "unpacked download as its value"
            )


@dataclass(frozen=True)
class ExportConfig:
    """The ONNX export of the merged model and its parity check against PyTorch."""

    height: int = field(default=512, metadata={"help": "input height of the exported model (fixed)", "ge": 1})
    width: int = field(default=512, metadata={"help": "input width of the exported model (fixed)", "ge": 1})
    opset: int = field(default=18, metadata={"help": "ONNX opset", "ge": 1})
    rtol: float = field(
        default=1e-3, metadata={"help": "largest max|onnx - torch| / max|torch| accepted", "gt": 0}
    )
    min_agreement: float = field(
        default=0.999, metadata={"help": "smallest share of equal argmax pixels", "gt": 0, "le": 1}
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class TrackConfig:
    """What the pipeline records in MLflow beyond its runs."""

    register_model: bool = field(
        default=False,
        metadata={"help": "stage package registers the model as models:/recyclelora-<run name>"},
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
