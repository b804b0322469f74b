from __future__ import annotations

import pytest

from recyclelora.train.sampler import BatchOrder
from recyclelora.train.schedules import cosine_value, poly_factor


def test_batch_order_is_seeded_and_covers_each_epoch_once() -> None:
    order = BatchOrder(size=10, batch_size=3, seed=4)
    first = order.epoch_batches(0)
    assert first == BatchOrder(size=10, batch_size=3, seed=4).epoch_batches(0)
    assert first != order.epoch_batches(1)
    flat = [i for batch in first for i in batch]
    assert len(flat) == 9 and len(set(flat)) == 9 and set(flat) <= set(range(10))


@pytest.mark.parametrize(("world_size", "grad_accum"), [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_each_step_trains_the_same_global_batch_on_any_split(world_size: int, grad_accum: int) -> None:
    single = BatchOrder(size=19, batch_size=4, seed=2).epoch_batches(1)
    ranks = [
        BatchOrder(size=19, batch_size=4, seed=2, rank=r, world_size=world_size, grad_accum=grad_accum)
        for r in range(world_size)
    ]
    assert ranks[0].micro_batch_size == 4 // (world_size * grad_accum)
    shares = [order.epoch_batches(1) for order in ranks]
    for step, batch in enumerate(single):
        micro = [m for share in shares for m in share[step * grad_accum : (step + 1) * grad_accum]]
        assert sorted(i for m in micro for i in m) == sorted(batch)
    assert all(order.batches_per_epoch == len(single) * grad_accum for order in ranks)


def test_a_global_batch_that_does_not_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"batch_size=6 .* 4 process\(es\) x grad_accum 1: use a multiple of 4"):
        BatchOrder(size=50, batch_size=6, world_size=4)
    with pytest.raises(ValueError, match=r"2 process\(es\) x grad_accum 2"):
        BatchOrder(size=50, batch_size=6, world_size=2, grad_accum=2)


def test_too_few_samples_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="3 training samples are too few for train.batch_size=4"):
        BatchOrder(size=3, batch_size=4, world_size=2)


def test_poly_and_cosine_schedules() -> None:
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert poly_factor(50, 100, power=0.9) == pytest.approx(0.5**0.9)
    assert cosine_value(0, 100, 0.05, 1e-5) == pytest.approx(0.05)
    assert cosine_value(100, 100, 0.05, 1e-5) == pytest.approx(1e-5)
    assert cosine_value(50, 100, 0.05, 1e-5) == pytest.approx((0.05 + 1e-5) / 2)
