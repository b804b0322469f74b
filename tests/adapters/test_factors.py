from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from recyclelora.adapters.factors import lora_factors, rrqr_factors, svd_factors


def _weight(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a decaying spectrum, as in trained weights, so pivots are well separated
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))
    n = min(shape)
    s = torch.logspace(0, -2, n)
    return (u[:, :n] * s) @ v[:, :n].T


@pytest.mark.parametrize("shape", [(48, 32), (32, 96), (40, 40)])
def test_rrqr_matches_pivoted_qr_definition(shape: tuple[int, int]) -> None:
    w = _weight(shape)
    r_main, r_sub = 6, 3
    f = rrqr_factors(w, r_main, r_sub)
    q, r, p = scipy.linalg.qr(w.numpy(), mode="economic", pivoting=True)
    n = min(shape)
    np.testing.assert_allclose(q @ r, w.numpy()[:, p], atol=1e-5)
    np.testing.assert_allclose(f.b_sub.numpy(), q[:, :r_sub], atol=1e-5)
    np.testing.assert_allclose(f.b_main.numpy(), q[:, n - r_main : n], atol=1e-5)
    for a, pivots in ((f.a_sub, p[:r_sub]), (f.a_main, p[n - r_main : n])):
        assert set(torch.unique(a).tolist()) <= {0.0, 1.0}
        assert torch.equal(a.sum(dim=1), torch.ones(a.shape[0]))
        assert a.argmax(dim=1).tolist() == pivots.tolist()
    # B A has r unit singular values: effective rank exactly r
    for b, a, rank in ((f.b_main, f.a_main, r_main), (f.b_sub, f.a_sub, r_sub)):
        torch.testing.assert_close(torch.linalg.svdvals(b @ a)[:rank], torch.ones(rank), atol=1e-5, rtol=0)
        torch.testing.assert_close(b.T @ b, torch.eye(rank), atol=1e-5, rtol=0)


def test_wide_matrix_main_uses_first_n_pivots_only() -> None:
    w = _weight((16, 64))
    f = rrqr_factors(w, 4, 2)
    _, _, p = scipy.linalg.qr(w.numpy(), mode="economic", pivoting=True)
    assert f.a_main.argmax(dim=1).tolist() == p[12:16].tolist()
    assert f.a_main.argmax(dim=1).tolist() != p[-4:].tolist()


def test_rrqr_does_not_modify_the_weight() -> None:
    w = _weight((1, 8))  # a row vector is both C- and F-contiguous
    before = w.clone()
    rrqr_factors(w, 1, 0)
    assert torch.equal(w, before)


@pytest.mark.parametrize(
    ("r_main", "r_sub", "message"),
    [(-1, 2, ">= 0"), (2, -3, ">= 0"), (20, 13, "min(out, in) = 32")],
)
def test_invalid_ranks(r_main: int, r_sub: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rrqr_factors(_weight((48, 32)), r_main, r_sub)


def test_zero_ranks_give_empty_sides() -> None:
    f = rrqr_factors(_weight((24, 16)), 0, 3)
    assert f.a_main.shape == (0, 16) and f.b_main.shape == (24, 0)
    f = rrqr_factors(_weight((24, 16)), 5, 0)
    assert f.a_sub.shape == (0, 16) and f.b_sub.shape == (24, 0)


def test_bf16_weight_is_decomposed_in_float32() -> None:
    w = _weight((32, 24))
    f16 = rrqr_factors(w.bfloat16(), 4, 2)
    f32 = rrqr_factors(w.bfloat16().float(), 4, 2)
    assert f16.b_main.dtype == torch.float32
    assert torch.equal(f16.b_main, f32.b_main) and torch.equal(f16.a_sub, f32.a_sub)


@pytest.mark.parametrize("minor", [False, True])
def test_svd_residual_removes_top_or_bottom_components(minor: bool) -> None:
    w = _weight((40, 30))
    rank, scaling = 5, 0.25
    f = svd_factors(w, rank, scaling, minor=minor)
    residual = w - scaling * f.product()
    s = torch.linalg.svdvals(w)
    kept = s[:-rank] if minor else s[rank:]
    torch.testing.assert_close(torch.linalg.svdvals(residual)[: kept.numel()], kept, atol=1e-5, rtol=1e-4)
    removed = s[-rank:] if minor else s[:rank]
    torch.testing.assert_close(torch.linalg.svdvals(scaling * f.product())[:rank], removed, atol=1e-5, rtol=1e-4)


def test_lora_b_is_zero_and_a_is_kaiming_uniform() -> None:
    w = _weight((40, 30))
    f = lora_factors(w, 6, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(f.b_main) == 0
    assert f.a_main.abs().max() <= 1 / 30**0.5
    assert f.a_main.std() > 0.5 / 30**0.5 / 3**0.5
    again = lora_factors(w, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(f.a_main, again.a_main)
