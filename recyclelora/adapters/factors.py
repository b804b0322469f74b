"""Initial adapter factors of one weight matrix: RRQR (RecycleLoRA), PiSSA, MiLoRA and LoRA.

Every initialiser returns :class:`Factors` ``(a_main, b_main, a_sub, b_sub)`` with ``a_* : r x in`` and
``b_* : out x r``, such that the adapted layer computes ``W_res x + s (B_main A_main + B_sub A_sub) x`` with
``W_res = W0 - s (B_main A_main + B_sub A_sub)``. All decompositions run in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from recyclelora.errors import InvalidInputError

#: Bumped whenever an initialiser's output changes, so cached decompositions are recomputed.
ALGORITHM_VERSION = 1


@dataclass(frozen=True)
class Factors:
    """Adapter factors of one layer; a rank of 0 gives ``0 x in`` / ``out x 0`` tensors."""

    a_main: torch.Tensor
    b_main: torch.Tensor
    a_sub: torch.Tensor
    b_sub: torch.Tensor

    @property
    def rank_main(self) -> int:
        return self.a_main.shape[0]

    @property
    def rank_sub(self) -> int:
        return self.a_sub.shape[0]

    def product(self) -> torch.Tensor:
        """``B_main A_main + B_sub A_sub`` (out x in, float32)."""
        b = torch.cat([self.b_main, self.b_sub], dim=1).float()
        a = torch.cat([self.a_main, self.a_sub], dim=0).float()
        return b @ a


def check_ranks(shape: tuple[int, int], rank_main: int, rank_sub: int) -> None:
    """Raise ``ValueError`` unless ``0 <= r_main, r_sub`` and ``r_main + r_sub <= min(out, in)``."""
    limit = min(shape)
    if rank_main < 0 or rank_sub < 0:
        raise InvalidInputError(f"ranks must be >= 0, got rank_main={rank_main}, rank_sub={rank_sub}")
    if rank_main + rank_sub > limit:
        raise InvalidInputError(
            f"rank_main + rank_sub = {rank_main + rank_sub} exceeds min(out, in) = {limit} "
            f"for a {shape[0]} x {shape[1]} weight: lower the ranks to at most {limit} together"
        )


def _as_float32(weight: torch.Tensor) -> np.ndarray:
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out x in), got shape {tuple(weight.shape)}")
    return weight.detach().to(device="cpu", dtype=torch.float32).numpy()


def _selection(rows: np.ndarray, columns: int) -> torch.Tensor:
    """0/1 matrix ``A`` with ``A[i, rows[i]] = 1`` (len(rows) x columns)."""
    a = torch.zeros(len(rows), columns, dtype=torch.float32)
    a[torch.arange(len(rows)), torch.as_tensor(rows, dtype=torch.long)] = 1.0
    return a


def rrqr_columns(weight: np.ndarray, rank_main: int, rank_sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Pivots ``P`` and the columns ``Q[:, :r_sub]``, ``Q[:, n - r_main:n]`` of ``W0[:, P] = Q R`` (numpy only).

    One LAPACK geqp3 (float32, optimal workspace: the same pivots as scipy's ``qr(..., pivoting=True)``);
    only the needed columns of Q are formed, by applying the Householder reflectors to unit vectors
    (ormqr), which equals scipy's Q to float32 rounding. Returns ``(pivots (n,), q_columns (out, r_sub + r_main))``.

    BLAS runs single-threaded here: with near-tied column norms the pivot order depends on the BLAS thread
    count, and the factors must not depend on the machine they were computed on.
    """
    with threadpool_limits(1):
        return _rrqr_columns(np.array(weight, dtype=np.float32, order="F", copy=True), rank_main, rank_sub)


def _rrqr_columns(w: np.ndarray, rank_main: int, rank_sub: int) -> tuple[np.ndarray, np.ndarray]:
    out_features, in_features = w.shape
    n = min(out_features, in_features)
    geqp3, ormqr = lapack.get_lapack_funcs(("geqp3", "ormqr"), (w,))
    lwork = int(geqp3(w, lwork=-1)[3][0])
    qr, jpvt, tau, _, info = geqp3(w, lwork=lwork, overwrite_a=True)
    if info != 0:
        raise RuntimeError(f"LAPACK geqp3 failed with info={info}")
    columns = np.concatenate([np.arange(rank_sub), np.arange(n - rank_main, n)])
    unit = np.zeros((out_features, len(columns)), dtype=np.float32, order="F")
    unit[columns, np.arange(len(columns))] = 1.0
    if len(columns):
        reflectors = np.asfortranarray(qr[:, :n])
        lwork = int(ormqr("L", "N", reflectors, tau, unit, -1)[1][0])
        unit, _, info = ormqr("L", "N", reflectors, tau, unit, lwork, overwrite_c=True)
        if info != 0:
            raise RuntimeError(f"LAPACK ormqr failed with info={info}")
    return jpvt[:n].astype(np.int64) - 1, np.ascontiguousarray(unit)


def factors_from_columns(
    pivots: np.ndarray, q_columns: np.ndarray, in_features: int, rank_main: int, rank_sub: int
) -> Factors:
    """RecycleLoRA factors from :func:`rrqr_columns`' output.

    With ``n = min(out, in)``: ``B_sub = Q[:, :r_sub]``, ``A_sub[i, P[i]] = 1`` (major directions) and
    ``B_main = Q[:, n - r_main:n]``, ``A_main[i, P[n - r_main + i]] = 1`` (minor directions).
    """
    n = len(pivots)
    q = torch.from_numpy(q_columns)
    return Factors(
        a_main=_selection(pivots[n - rank_main : n], in_features),
        b_main=q[:, rank_sub:].contiguous(),
        a_sub=_selection(pivots[:rank_sub], in_features),
        b_sub=q[:, :rank_sub].contiguous(),
    )


def rrqr_factors(weight: torch.Tensor, rank_main: int, rank_sub: int) -> Factors:
    """RecycleLoRA factors of one weight from one column-pivoted QR ``W0[:, P] = Q R`` (float32, economic).

    Main and sub adapters come from the same factorisation; see :func:`rrqr_columns` and
    :func:`factors_from_columns`.
    """
    check_ranks(tuple(weight.shape), rank_main, rank_sub)
    pivots, q_columns = rrqr_columns(_as_float32(weight), rank_main, rank_sub)
    return factors_from_columns(pivots, q_columns, weight.shape[1], rank_main, rank_sub)


def svd_factors(weight: torch.Tensor, rank: int, scaling: float, *, minor: bool) -> Factors:
    """PiSSA (``minor=False``: top-r) or MiLoRA (``minor=True``: bottom-r) factors in the main slot.

    With ``W0 = U S V^T``: ``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``, so that ``s B A = U_r S_r V_r^T``
    and the residual ``W0 - s B A`` removes exactly those r singular components.
    """
    check_ranks(tuple(weight.shape), rank, 0)
    u, s, vh = torch.linalg.svd(weight.detach().to(device="cpu", dtype=torch.float32), full_matrices=False)
    index = slice(s.numel() - rank, s.numel()) if minor else slice(0, rank)
    root = torch.sqrt(s[index] / scaling)
    b = (u[:, index] * root).contiguous()
    a = (root[:, None] * vh[index]).contiguous()
    return Factors(a_main=a, b_main=b, a_sub=_empty_a(weight), b_sub=_empty_b(weight))


def lora_factors(weight: torch.Tensor, rank: int, generator: torch.Generator | None = None) -> Factors:
    """Plain LoRA in the main slot: ``A`` Kaiming-uniform (a = sqrt(5), as ``nn.Linear``), ``B = 0``."""
    check_ranks(tuple(weight.shape), rank, 0)
    out_features, in_features = weight.shape
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_ with a=sqrt(5) gives U(-1/sqrt(in), 1/sqrt(in))
    a = (torch.rand(rank, in_features, generator=generator) * 2.0 - 1.0) * bound
    return Factors(
        a_main=a,
        b_main=torch.zeros(out_features, rank),
        a_sub=_empty_a(weight),
        b_sub=_empty_b(weight),
    )


def _empty_a(weight: torch.Tensor) -> torch.Tensor:
    return torch.zeros(0, weight.shape[1])


def _empty_b(weight: torch.Tensor) -> torch.Tensor:
    return torch.zeros(weight.shape[0], 0)
