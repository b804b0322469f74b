from __future__ import annotations

import math

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


def test_schedules_are_mmengines_chainable_poly_lr_and_cosine_weight_decay() -> None:
    """The published configs' PolyLR(power 0.9, eta_min 0, end T) and CosineAnnealingParamScheduler(eta_min
    1e-5, end T), run here as mmengine runs them: recursive updates after each iteration, on every group."""
    total, power, lr0, eta = 10, 0.9, 1e-3, 1e-5
    lr, decays = lr0, {0.05: 0.05, 0.0: 0.0}
    for step in range(total):
        if step:
            lr *= (1 - 1 / (total - 1 - step + 1)) ** power
            ratio = (1 + math.cos(math.pi * step / total)) / (1 + math.cos(math.pi * (step - 1) / total))
            decays = {start: ratio * (value - eta) + eta for start, value in decays.items()}
        assert lr0 * poly_factor(step, total, power) == pytest.approx(lr, abs=1e-15)
        for start, value in decays.items():
            assert cosine_value(step, total, start, eta) == pytest.approx(value, abs=1e-15)
    assert lr == 0.0 and decays[0.0] > 9e-6  # the last step has lr 0; a no-decay group ends near eta_min
    assert poly_factor(0, 1) == 1.0
