"""The command-line options of a sweep's executor, shared by ``python -m pipeline sweep`` and
``python -m pipeline.compare run`` / ``curve``; :func:`slurm_options` builds (and validates) them."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from pipeline.sweep.slurm import SlurmOptions


def _help(name: str) -> str:
    return SlurmOptions.__dataclass_fields__[name].metadata["help"] + " (--executor slurm)"


DEFAULTS = SlurmOptions()


class ExecutorName(str, Enum):
    queue = "queue"
    slurm = "slurm"


Executor = Annotated[
    ExecutorName,
    typer.Option(help="queue: DVC's queue on this machine; slurm: one SLURM job per experiment (submitit)."),
]
Wait = Annotated[
    bool, typer.Option(help="Show each experiment's state until all are back; fail if any failed.")
]
Partition = Annotated[str | None, typer.Option(help=_help("partition"))]
Account = Annotated[str | None, typer.Option(help=_help("account"))]
Qos = Annotated[str | None, typer.Option(help=_help("qos"))]
Time = Annotated[str, typer.Option(help=_help("time"))]
CpusPerNode = Annotated[int, typer.Option(help=_help("cpus_per_node"))]
GpusPerNode = Annotated[int, typer.Option(help=_help("gpus_per_node"))]
MemGb = Annotated[float | None, typer.Option(help=_help("mem_gb"))]
Nodes = Annotated[int, typer.Option(help=_help("nodes"))]
SignalDelay = Annotated[int, typer.Option(help=_help("signal_delay_s"))]
MaxRequeues = Annotated[int, typer.Option(help=_help("max_requeues"))]
Sbatch = Annotated[list[str] | None, typer.Option("--sbatch", help=_help("sbatch") + "; repeat.")]


def slurm_options(
    partition: str | None,
    account: str | None,
    qos: str | None,
    time: str,
    cpus_per_node: int,
    gpus_per_node: int,
    mem_gb: float | None,
    nodes: int,
    signal_delay_s: int,
    max_requeues: int,
    sbatch: list[str] | None,
) -> SlurmOptions:
    """The validated :class:`~pipeline.sweep.slurm.SlurmOptions` of the command line's values."""
    return SlurmOptions(
        partition, account, qos, time, cpus_per_node, gpus_per_node, mem_gb, nodes, signal_delay_s,
        max_requeues, tuple(sbatch or ()),
    )  # fmt: skip
