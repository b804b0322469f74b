"""``params.yaml`` of the DVC pipeline: every section typed and validated before any stage does work.

Sections: ``base`` (seed), ``datasets`` (what the ``data`` stage produces), ``data``, ``model``, ``train``,
``eval`` (:func:`recyclelora.config.load_params`) and ``export``. An unknown section or key, or a refused
value, raises :class:`~recyclelora.config.ParamsError` naming it (``params.model.adapter: init='x' is not
supported: choose one of ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recyclelora.config import ParamsError, RunConfig, build_config, load_params, read_yaml
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.data.synth import SynthConfig

SECTIONS: tuple[str, ...] = ("base", "datasets", "data", "model", "train", "eval", "export")
#: Datasets ``recyclelora.data.download.download_dataset`` can fetch (GTAV publicly, Cityscapes with a login).
DOWNLOADABLE: tuple[str, ...] = ("gta5", "cityscapes")


@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = field(default=0, metadata={"help": "seeds training: data order, augmentation, random inits"})

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class DatasetsConfig:
    """What the ``data`` stage writes into its output folder: the embedded benchmark and/or real datasets."""

    synth: SynthConfig | None = field(
        default_factory=SynthConfig, metadata={"help": "the embedded benchmark's size; null = none"}
    )
    synth_seed: int = field(default=0, metadata={"help": "seed of the benchmark's scenes (not base.seed)"})
    real: dict[str, str | None] = field(
        default_factory=dict,
        metadata={"help": f"dataset name -> raw folder as distributed; null downloads it ({DOWNLOADABLE})"},
    )
    download_dir: str = field(
        default="data/downloads", metadata={"help": "where downloaded archives and raw files are kept"}
    )
    workers: int | None = field(default=None, metadata={"help": "processes for generation/preparation"})

    def __post_init__(self) -> None:
        if not isinstance(self.real, dict):
            raise TypeError(f"real must map dataset names to raw folders (or null), got {self.real!r}")
        if self.synth is None and not self.real:
            raise ValueError("synth is null and real is empty: the pipeline needs at least one dataset")
        if isinstance(self.synth_seed, bool) or not isinstance(self.synth_seed, int) or self.synth_seed < 0:
            raise ValueError(f"synth_seed must be an integer >= 0, got {self.synth_seed!r}")
        unknown = sorted(set(self.real) - set(RAW_DATASETS))
        if unknown:
            raise ValueError(f"real names unknown dataset(s) {unknown}: choose from {list(RAW_DATASETS)}")
        fetch = sorted(name for name, raw in self.real.items() if raw is None and name not in DOWNLOADABLE)
        if fetch:
            raise ValueError(
                f"real: {fetch} cannot be downloaded (only {list(DOWNLOADABLE)} can): give the folder of the "
                "unpacked download as its value"
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1 or null (all cores), got {self.workers!r}")


@dataclass(frozen=True)
class ExportConfig:
    """The ONNX export of the merged model and its parity check against PyTorch."""

    height: int = field(default=512, metadata={"help": "input height of the exported model (fixed)"})
    width: int = field(default=512, metadata={"help": "input width of the exported model (fixed)"})
    opset: int = field(default=18, metadata={"help": "ONNX opset"})
    rtol: float = field(default=1e-3, metadata={"help": "largest max|onnx - torch| / max|torch| accepted"})
    min_agreement: float = field(default=0.999, metadata={"help": "smallest share of equal argmax pixels"})

    def __post_init__(self) -> None:
        for name in ("height", "width", "opset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.rtol > 0:
            raise ValueError(f"rtol must be > 0, got {self.rtol!r}")
        if not 0 < self.min_agreement <= 1:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement!r}")


@dataclass(frozen=True)
class PipelineParams:
    """The validated ``params.yaml``; ``raw`` keeps the parsed file for logging what a stage read."""

    base: BaseConfig
    datasets: DatasetsConfig
    run: RunConfig
    export: ExportConfig
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
    run = load_params(path)
    raw = read_yaml(path) or {}
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
        raw=raw,
    )
