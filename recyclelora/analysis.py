"""Spectral measures of adapter updates: effective rank and subspace similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from recyclelora.adapters.inject import adapter_layers


def effective_rank(matrix: torch.Tensor, eps: float = 1e-12) -> float:
    """Roy and Vetterli's effective rank ``exp(-sum p_i log p_i)``, ``p_i = s_i / sum_j s_j``.

    ``s`` are the singular values; a zero matrix has effective rank 0.
    """
    return _effective_rank(torch.linalg.svdvals(matrix.detach().double()), eps)


def _effective_rank(s: torch.Tensor, eps: float = 1e-12) -> float:
    total = s.sum()
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def product_singular_values(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Singular values of ``B A`` (``out x r`` times ``r x in``) from an ``r x r`` problem.

    With ``B = Q_b R_b`` and ``A^T = Q_a R_a``, ``B A = Q_b (R_b R_a^T) Q_a^T`` and ``Q_b``, ``Q_a`` have
    orthonormal columns, so ``B A`` and ``R_b R_a^T`` share their singular values.
    """
    _, r_b = torch.linalg.qr(b.detach().double(), mode="reduced")
    _, r_a = torch.linalg.qr(a.detach().double().T, mode="reduced")
    return torch.linalg.svdvals(r_b @ r_a.T)


def effective_rank_of_product(b: torch.Tensor, a: torch.Tensor) -> float:
    """:func:`effective_rank` of ``B A`` without forming the ``out x in`` product."""
    return _effective_rank(product_singular_values(b, a))


@dataclass(frozen=True)
class SubspaceSimilarity:
    """Principal angles between two subspaces and the measures built on them."""

    angles: torch.Tensor  #: principal angles (radians), ascending
    grassmann_distance: float  #: ``||angles||_2``
    similarity: float  #: ``sum cos^2(angles) / min(r1, r2)`` in [0, 1]


def orthonormal_basis(matrix: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of ``matrix`` (reduced QR, float64)."""
    q, _ = torch.linalg.qr(matrix.detach().double(), mode="reduced")
    return q


def subspace_similarity(u1: torch.Tensor, u2: torch.Tensor) -> SubspaceSimilarity:
    """Compare the column spaces of ``u1`` (n x r1) and ``u2`` (n x r2); orthonormalised first.

    The cosines of the principal angles are the singular values of ``U1^T U2``.
    """
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"bases live in different spaces: {u1.shape[0]} vs {u2.shape[0]} rows")
    r = min(u1.shape[1], u2.shape[1])
    if r == 0:
        raise ValueError("subspace similarity needs two non-empty bases")
    cosines = torch.linalg.svdvals(orthonormal_basis(u1).T @ orthonormal_basis(u2))[:r].clamp(0.0, 1.0)
    angles = torch.arccos(cosines).flip(0)
    return SubspaceSimilarity(
        angles=angles,
        grassmann_distance=float(torch.linalg.vector_norm(angles)),
        similarity=float((cosines**2).sum() / r),
    )


@dataclass(frozen=True)
class LayerRankReport:
    """Effective rank of the main and sub updates ``B A`` of one layer, and how their column spaces relate."""

    layer: str
    rank_main: int
    rank_sub: int
    erank_main: float
    erank_sub: float
    grassmann_distance: float
    similarity: float

    @property
    def efficiency_main(self) -> float:
        """Rank efficiency: effective rank / rank."""
        return self.erank_main / self.rank_main if self.rank_main else math.nan

    @property
    def efficiency_sub(self) -> float:
        return self.erank_sub / self.rank_sub if self.rank_sub else math.nan


def rank_report(model: nn.Module) -> list[LayerRankReport]:
    """Per adapter layer: effective rank of ``B_main A_main`` and ``B_sub A_sub`` and the subspace
    similarity of ``B_main`` and ``B_sub`` (NaN when either side is empty)."""
    reports = []
    for name, layer in adapter_layers(model):
        if layer.rank_main and layer.rank_sub:
            sim = subspace_similarity(layer.lora_B_main, layer.lora_B_sub)
            distance, similarity = sim.grassmann_distance, sim.similarity
        else:
            distance = similarity = math.nan
        reports.append(
            LayerRankReport(
                layer=name,
                rank_main=layer.rank_main,
                rank_sub=layer.rank_sub,
                erank_main=effective_rank_of_product(layer.lora_B_main, layer.lora_A_main)
                if layer.rank_main
                else math.nan,
                erank_sub=effective_rank_of_product(layer.lora_B_sub, layer.lora_A_sub) if layer.rank_sub else math.nan,
                grassmann_distance=distance,
                similarity=similarity,
            )
        )
    return reports
