"""The command-line options of a sweep's executor, shared by ``python -m pipeline sweep`` and
``python -m pipeline.compare run`` / ``curve``: :func:`with_slurm_options` adds the SLURM ones to a command,
:func:`slurm_options` builds (and validates) them."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

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
ProcessesPerNode = Annotated[int | None, typer.Option(help=_help("processes_per_node"))]
SignalDelay = Annotated[int, typer.Option(help=_help("signal_delay_s"))]
MaxRequeues = Annotated[int, typer.Option(help=_help("max_requeues"))]
Sbatch = Annotated[list[str] | None, typer.Option("--sbatch", help=_help("sbatch") + "; repeat.")]
GitRemote = Annotated[str | None, typer.Option(help=_help("git_remote"))]
Workdir = Annotated[str | None, typer.Option(help=_help("workdir"))]


def slurm_options(
    partition: str | None,
    account: str | None,
    qos: str | None,
    time: str,
    cpus_per_node: int,
    gpus_per_node: int,
    mem_gb: float | None,
    nodes: int,
    processes_per_node: int | None,
    signal_delay_s: int,
    max_requeues: int,
    sbatch: list[str] | None,
    git_remote: str | None,
    workdir: str | None,
) -> SlurmOptions:
    """The validated :class:`~pipeline.sweep.slurm.SlurmOptions` of the command line's values."""
    return SlurmOptions(
        partition, account, qos, time, cpus_per_node, gpus_per_node, mem_gb, nodes, processes_per_node,
        signal_delay_s, max_requeues, tuple(sbatch or ()), git_remote, workdir,
    )  # fmt: skip


#: The SLURM options, in this order after a command's own: (parameter, annotation, default).
_SLURM_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("partition", Partition, None),
    ("account", Account, None),
    ("qos", Qos, None),
    ("time", Time, DEFAULTS.time),
    ("cpus_per_node", CpusPerNode, DEFAULTS.cpus_per_node),
    ("gpus_per_node", GpusPerNode, DEFAULTS.gpus_per_node),
    ("mem_gb", MemGb, None),
    ("nodes", Nodes, DEFAULTS.nodes),
    ("processes_per_node", ProcessesPerNode, None),
    ("signal_delay_s", SignalDelay, DEFAULTS.signal_delay_s),
    ("max_requeues", MaxRequeues, DEFAULTS.max_requeues),
    ("sbatch", Sbatch, None),
    ("git_remote", GitRemote, None),
    ("workdir", Workdir, None),
)
#: What a command wrapped by :func:`with_slurm_options` gets as ``slurm``: the validated options, when called.
SlurmFactory = Callable[[], SlurmOptions]
_R = TypeVar("_R")


def with_slurm_options(command: Callable[..., _R]) -> Callable[..., _R]:
    """``command`` (a Typer command with a keyword-only parameter ``slurm``) with the SLURM options
    (``--partition`` ... ``--sbatch``) after its own; it is called with ``slurm``, a function returning their
    :func:`slurm_options`, so that they are validated only when the command runs on SLURM."""
    own = inspect.signature(command, eval_str=True)
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in _SLURM_OPTIONS
    ]

    @functools.wraps(command)
    def wrapper(**values: Any) -> _R:
        slurm = {name: values.pop(name) for name, _, _ in _SLURM_OPTIONS}
        return command(**values, slurm=functools.partial(slurm_options, **slurm))

    parameters = [parameter for parameter in own.parameters.values() if parameter.name != "slurm"]
    wrapper.__signature__ = own.replace(parameters=[*parameters, *options])  # type: ignore[attr-defined]
    return wrapper
