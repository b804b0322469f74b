from __future__ import annotations

import itertools

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


def test_resuming_at_any_micro_batch_continues_the_same_stream() -> None:
    order = BatchOrder(size=11, batch_size=2, seed=1)
    stream = list(itertools.islice(order.iterate(0), 20))
    for start in (0, 3, 5, 7, 13):
        assert list(itertools.islice(order.iterate(start), 20 - start)) == stream[start:]


def test_shards_of_two_processes_make_the_single_process_batch() -> None:
    single = BatchOrder(size=16, batch_size=4, seed=2)
    ranks = [BatchOrder(size=16, batch_size=2, seed=2, rank=r, world_size=2) for r in range(2)]
    for m, batch in enumerate(single.epoch_batches(0)):
        union = ranks[0].epoch_batches(0)[m] + ranks[1].epoch_batches(0)[m]
        assert sorted(union) == sorted(batch)
    assert set(ranks[0].epoch_batches(0)[0]).isdisjoint(ranks[1].epoch_batches(0)[0])


def test_too_few_samples_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few for batch_size 4 on 2 process"):
        BatchOrder(size=5, batch_size=4, world_size=2)


def test_poly_and_cosine_schedules() -> None:
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert poly_factor(50, 100, power=0.9) == pytest.approx(0.5**0.9)
    assert cosine_value(0, 100, 0.05, 1e-5) == pytest.approx(0.05)
    assert cosine_value(100, 100, 0.05, 1e-5) == pytest.approx(1e-5)
    assert cosine_value(50, 100, 0.05, 1e-5) == pytest.approx((0.05 + 1e-5) / 2)
