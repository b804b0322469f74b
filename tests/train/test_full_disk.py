"""A full disk while a checkpoint is written, for real: the run folder is a small tmpfs (mounting needs root: CI
runs as root) that holds the first checkpoint but not the second. The real ``recyclelora train`` command stops
with one line naming the step and the intact checkpoint; nothing half-written stays; once the tmpfs grows,
``--resume`` ends with the tensors of an uninterrupted run. Both writers of a checkpoint are filled up in turn:
safetensors (the model) and torch.save (the trainer state).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recyclelora.models.checkpoint import read_tensors
from recyclelora.train.loop import _out_of_space
from recyclelora.train.state import load_trainer_state
from tests.train.test_stop_signals import (
    ENV,
    ROOT,
    START_S,
    assert_same_training,
    run_to_end,
    train_command,
    write_params,
)

ITERATIONS = 4


def _mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder to mount a tmpfs on (:func:`_mount_tmpfs`), unmounted at the end."""
    folder = tmp_path / "disk"
    yield folder
    if folder.is_mount():  # lazily: a failed test's traceback may still hold a tensor mapped from a file there
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_benchmark: dict[str, dict[str, Path]]) -> Path:
    """The uninterrupted run (a checkpoint every step) by the same command, on a disk with room."""
    folder = tmp_path_factory.mktemp("full_disk")
    params = write_params(folder, tiny_benchmark["synth_src"]["train"], iterations=ITERATIONS, checkpoint_every=1)
    run_to_end(train_command(params, folder / "run", folder / "init_cache"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("full_at", ["model.safetensors", "trainer_state.pt"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_is_exact(
    full_at: str, reference: Path, small_disk: Path
) -> None:
    checkpoint = reference / "run" / "checkpoints" / "step_0000003"
    model, state = ((checkpoint / name).stat().st_size for name in ("model.safetensors", "trainer_state.pt"))
    # room for the first checkpoint and half of the second's model, or all of it and half of its trainer state
    _mount_tmpfs(small_disk, model + state + (model // 2 if full_at == "model.safetensors" else model + state // 2))
    run_dir = small_disk / "run"
    command = train_command(reference / "params.yaml", run_dir, reference / "init_cache")
    failed = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=START_S)

    assert failed.returncode == 1, failed.stderr[-3000:]
    assert re.fullmatch(
        rf"error: no space left on device while writing the checkpoint of step 2 in {re.escape(str(run_dir))}: the "
        r"checkpoint of step 1 is intact; free space and continue with --resume\n",
        failed.stderr,
    ), failed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in run_dir.rglob("*")) == sorted(
        ["checkpoints", "latest", "step_0000001", "model.safetensors", "trainer_state.pt", "train_log.csv"]
    )  # no partial checkpoint folder, no temporary file
    assert (checkpoints / "latest").read_text() == "step_0000001"
    read_tensors(checkpoints / "step_0000001" / "model.safetensors")  # its digest checks every byte
    assert load_trainer_state(checkpoints / "step_0000001")["step"] == 1

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    run_to_end([*command, "--resume"])
    assert_same_training(run_dir, reference / "run", iterations=ITERATIONS)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_recognised_through_the_writers_errors(code: int) -> None:
    """torch's writer raises a RuntimeError while handling its file's OSError; safetensors' names the errno in
    its text; other errors are not a full disk."""
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 400704 vs 598")  # noqa: B904
    except RuntimeError as torch_error:
        assert _out_of_space(torch_error)
    assert _out_of_space(RuntimeError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})"))
    assert not _out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not _out_of_space(RuntimeError("unexpected pos 400704 vs 598"))
