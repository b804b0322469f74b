"""Trainer state (optimiser, step, RNG) saved beside a model checkpoint and loaded with ``weights_only=True``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from recyclelora.errors import InvalidInputError, first_sentence
from recyclelora.io import atomic_path

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """torch's CPU and CUDA generator states (data order and augmentation are seeded separately)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(folder: Path, *, step: int, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    """Write ``trainer_state.pt`` (tensors, numbers and strings only) atomically."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), **extra}
    # through Python's unbuffered file: a full disk is then an OSError (the context of torch's RuntimeError)
    # instead of torch's own writer's "unexpected pos"
    with atomic_path(folder / STATE_FILE) as tmp, open(tmp, "wb", buffering=0) as handle:
        torch.save(state, handle)


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` without unpickling arbitrary objects; a truncated or corrupt file is a
    ValueError naming it."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a complete training checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise InvalidInputError(
            f"{path} is truncated or corrupt ({first_sentence(error)}): delete the folder {folder} to resume from "
            "the checkpoint before it, or train into a new folder"
        ) from None
