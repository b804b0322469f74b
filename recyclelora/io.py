"""Small file-system helpers shared by every stage: atomic files and folders, content hashes, reproducible
safetensors, the cache folder, dotted keys for nested settings. Free of torch at import (:func:`save_safetensors`
imports it when called)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: What :func:`atomic_dir` appends to a folder's name for the folder it builds in its place.
PARTIAL_SUFFIX = ".partial"


def default_cache_dir() -> Path:
    """``$RECYCLELORA_CACHE``, else ``$XDG_CACHE_HOME/recyclelora``, else ``~/.cache/recyclelora``."""
    if root := os.environ.get("RECYCLELORA_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recyclelora"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one,
    never a half-written file. On error the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    with _replacing(target, tmp_path):
        yield tmp_path
        # mkstemp creates 0600, and some writers (safetensors) replace the file with a 0600 one of their own:
        # give the final file the permissions open() would
        tmp_path.chmod(0o666 & ~umask)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, keep_partial: bool = False) -> Iterator[Path]:
    """Yield the folder ``<path>.partial`` (:data:`PARTIAL_SUFFIX`); on success it replaces ``path``.

    Readers never see a half-written folder: ``path`` is the old one until the block succeeds, then the complete
    new one. On error the partial folder is removed, or kept with ``keep_partial``, for a resumable writer to
    continue in; without it every attempt starts from an empty partial folder.
    """
    target = Path(path)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if not keep_partial:
        _remove(partial)
    partial.mkdir(parents=True, exist_ok=True)
    with _replacing(target, partial, keep_on_error=keep_partial):
        yield partial


@contextlib.contextmanager
def _replacing(target: Path, tmp: Path, *, keep_on_error: bool = False) -> Iterator[None]:
    """Move ``tmp`` over ``target`` when the block succeeds; remove it when the block fails (unless kept)."""
    try:
        yield
        if tmp.is_dir():
            _remove(target)  # a folder cannot be renamed over a file or a non-empty folder
        os.replace(tmp, target)
    except BaseException:
        if not keep_on_error:
            with contextlib.suppress(OSError):  # the first error is the one to report
                _remove(tmp)
        raise


def _remove(path: Path) -> None:
    """Delete the file, link or folder tree at ``path``, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` as safetensors, atomically and byte-for-byte reproducibly.

    safetensors keeps ``__metadata__`` in a hash map, so the same tensors and metadata saved twice give files
    with their metadata in different orders, and different hashes for DVC and the caches. The header is
    rewritten in place with the metadata keys sorted: the same JSON, the same length, one order.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), tmp, metadata=dict(metadata) if metadata else None)
        if metadata:
            with open(tmp, "r+b") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
                header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
                text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
                if len(text) > size:  # cannot happen: reordering a JSON object keeps its length
                    raise RuntimeError(f"the reordered safetensors header of {path} grew from {size} bytes")
                handle.seek(8)
                handle.write(text.ljust(size, b" "))  # the format pads headers with spaces
    return Path(path)


def flatten(tree: Mapping[str, object], *, keep_empty: bool = True) -> dict[str, object]:
    """Nested mappings as dotted keys: ``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``.

    An empty mapping is a value (``{"subset": {}}`` stays), or is left out without ``keep_empty``.
    """
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat |= {f"{key}.{name}": leaf for name, leaf in flatten(value, keep_empty=keep_empty).items()}
        elif keep_empty or not isinstance(value, Mapping):
            flat[str(key)] = value
    return flat
