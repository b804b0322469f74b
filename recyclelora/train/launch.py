"""Start a command as the processes of one distributed training run: ``torchrun`` on one node, or one ``torchrun``
per node of a SLURM allocation (``srun``) meeting at the first node (c10d rendezvous).

How many: :data:`NPROC_ENV` processes per node (one per GPU; default 1), on every node of the SLURM job this runs
in (``SLURM_JOB_NUM_NODES``; 1 outside SLURM). Each process then joins the group as
:func:`recyclelora.train.distributed.setup` does under torchrun, so ``train.batch_size`` stays the global batch.
The command runs this module, whose :func:`torchrun` (the only part that imports torch) ends an orderly stop as
one process would end it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from recyclelora.errors import InvalidInputError
from recyclelora.signals import STOP_SIGNALS

#: Environment variable: training processes per node (torchrun's ``--nproc-per-node``).
NPROC_ENV = "RECYCLELORA_NPROC_PER_NODE"
#: What torchrun forwards to its processes rather than dying of (it dies of USR1/USR2 by default): the stop
#: signals of :mod:`recyclelora.signals`, which SLURM sends before a preemption or the time limit.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
#: Ports of the rendezvous on the first node: this base plus the job id modulo :data:`_PORT_SPAN`.
_PORT_BASE, _PORT_SPAN = 29500, 20000


def processes_per_node(environ: Mapping[str, str] = os.environ) -> int:
    """:data:`NPROC_ENV` as a number >= 1 (1 when unset)."""
    raw = environ.get(NPROC_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInputError(f"{NPROC_ENV} must be a whole number of processes >= 1, got {raw!r}")
    return int(raw)


def slurm_nodes(environ: Mapping[str, str] = os.environ) -> int:
    """Nodes of the SLURM job this runs in (1 outside SLURM)."""
    return int(environ.get("SLURM_JOB_NUM_NODES", "1")) if "SLURM_JOB_ID" in environ else 1


def first_node(environ: Mapping[str, str]) -> str:
    """The first host of the SLURM job's node list (``scontrol show hostnames``)."""
    names = subprocess.run(
        ["scontrol", "show", "hostnames", environ["SLURM_JOB_NODELIST"]],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return names[0]


def launch_command(module_args: Sequence[str], environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The command that runs ``python <module_args>`` as nodes x :data:`NPROC_ENV` processes (this module's
    :func:`torchrun`, under ``srun`` on several nodes), or ``None`` when one process is asked for or this already
    is one of a run's processes (``WORLD_SIZE`` is set)."""
    nproc, nodes = processes_per_node(environ), slurm_nodes(environ)
    if "WORLD_SIZE" in environ or nproc * nodes == 1:
        return None
    torchrun = [sys.executable, "-m", __name__, f"--nproc-per-node={nproc}",
                f"--signals-to-handle={FORWARDED_SIGNALS}", "--max-restarts=0"]  # fmt: skip
    if nodes == 1:
        return [*torchrun, "--standalone", *module_args]
    job = environ["SLURM_JOB_ID"]
    port = _PORT_BASE + int(job) % _PORT_SPAN
    # a step inside the job's first step (the one running DVC): --overlap shares its CPUs, --mem=0 its memory
    return [
        "srun", "--overlap", "--mem=0", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        *torchrun, f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={first_node(environ)}:{port}",
        f"--rdzv-id={job}", *module_args,
    ]  # fmt: skip


def relaunch(module_args: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Replace this process by :func:`launch_command`'s when it asks for several processes; else return.

    The environment passes on (torchrun gives each process one OpenMP thread unless ``OMP_NUM_THREADS`` is set).
    """
    command = launch_command(module_args, environ)
    if command is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, dict(environ))


def torchrun(args: Sequence[str]) -> int:
    """``torchrun <args>``'s exit status, without its traceback when a run stopped in order: ``128 + signum``
    when a stop signal reached torchrun (it forwarded it and waited for its processes) or ended every failed
    process (each exited ``128 + signum`` after its checkpoint; rank 0 said so). Another failure prints
    torchrun's summary, which names the rank that failed first, and gives 1."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(list(args))
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        codes = {failure.exitcode for failure in failed.failures.values()}
        if len(codes) == 1 and codes <= {128 + int(signum) for signum in STOP_SIGNALS}:
            return codes.pop()
        print(failed.format_msg(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
