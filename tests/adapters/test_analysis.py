from __future__ import annotations

import math

import pytest
import torch

from recyclelora import AdapterConfig, effective_rank, inject_adapters, rank_report, subspace_similarity
from recyclelora.analysis import effective_rank_of_product
from tests.helpers import tiny_vit


def test_effective_rank_of_known_spectra() -> None:
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0]))) == pytest.approx(3.0)
    assert effective_rank(torch.outer(torch.randn(7), torch.randn(5))) == pytest.approx(1.0, abs=1e-6)
    s = torch.tensor([3.0, 1.0])
    p = s / s.sum()
    assert effective_rank(torch.diag(s)) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_subspace_similarity_extremes() -> None:
    eye = torch.eye(6)
    same = subspace_similarity(eye[:, :3], eye[:, :3] @ torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 2]]))
    assert same.similarity == pytest.approx(1.0) and same.grassmann_distance == pytest.approx(0.0, abs=1e-6)
    orthogonal = subspace_similarity(eye[:, :2], eye[:, 2:5])
    assert orthogonal.similarity == pytest.approx(0.0, abs=1e-12)
    assert orthogonal.grassmann_distance == pytest.approx(math.sqrt(2) * math.pi / 2)
    tilted = subspace_similarity(eye[:, :1], (eye[:, 0] + eye[:, 1]).unsqueeze(1))
    assert tilted.similarity == pytest.approx(0.5) and tilted.grassmann_distance == pytest.approx(math.pi / 4)
    with pytest.raises(ValueError, match="different spaces"):
        subspace_similarity(torch.eye(3), torch.eye(4))


def test_rank_report_at_initialisation() -> None:
    model = tiny_vit()
    inject_adapters(model, AdapterConfig(rank_main=6, rank_sub=2))
    report = rank_report(model)
    assert len(report) == 8
    for row in report:
        assert row.erank_main == pytest.approx(6.0, rel=1e-5) and row.efficiency_main == pytest.approx(1.0, rel=1e-5)
        assert row.erank_sub == pytest.approx(2.0, rel=1e-5)
        assert row.similarity == pytest.approx(0.0, abs=1e-6)  # Q columns are orthogonal
        assert row.grassmann_distance == pytest.approx(math.sqrt(2) * math.pi / 2, rel=1e-5)


def test_rank_report_single_adapter_has_nan_sub() -> None:
    model = tiny_vit()
    inject_adapters(model, AdapterConfig(init="pissa", rank_main=6, rank_sub=2))
    row = rank_report(model)[0]
    assert row.rank_sub == 0 and math.isnan(row.erank_sub) and math.isnan(row.similarity)


def test_effective_rank_of_product_matches_the_formed_product() -> None:
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 5, generator=g), torch.randn(5, 30, generator=g) * torch.logspace(0, -2, 5)[:, None]
    assert effective_rank_of_product(b, a) == pytest.approx(effective_rank(b.double() @ a.double()), rel=1e-9)
    assert effective_rank_of_product(torch.zeros(4, 2), torch.zeros(2, 3)) == 0.0
