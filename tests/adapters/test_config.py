from __future__ import annotations

import re

import pytest

from recyclelora import AdapterConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"init": "svd"},
            (
                "AdapterConfig.init must be one of ['rrqr', 'rrqr-main', 'rrqr-sub', 'lora', 'pissa', 'milora'], "
                "got 'svd'"
            ),
        ),
        ({"rank_main": -1}, "rank_main must be an integer >= 0, got -1"),
        ({"rank_sub": 2.5}, "rank_sub must be an integer >= 0"),
        ({"rank_main": 0, "rank_sub": 0}, "trains nothing"),
        ({"init": "rrqr-sub", "rank_sub": 0}, "trains nothing"),
        ({"alpha": 0.0}, "AdapterConfig.alpha must be a number > 0, got 0.0"),
        ({"lr_mult_sub": -0.5}, "AdapterConfig.lr_mult_sub must be a number >= 0, got -0.5"),
        ({"target_modules": ()}, "target_modules must be non-empty"),
        ({"blocks": ()}, "blocks must be None"),
        ({"blocks": ("a",)}, "AdapterConfig.blocks must be a list of integers or null, got ('a',)"),
    ],
)
def test_invalid_configs_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AdapterConfig(**kwargs)


@pytest.mark.parametrize(
    ("init", "ranks", "scaling"),
    [
        ("rrqr", (32, 4), 1 / 36),
        ("rrqr-main", (32, 0), 1 / 32),
        ("rrqr-sub", (0, 4), 1 / 4),
        ("lora", (36, 0), 1 / 36),
        ("pissa", (36, 0), 1 / 36),
        ("milora", (36, 0), 1 / 36),
    ],
)
def test_effective_ranks_and_scaling(init: str, ranks: tuple[int, int], scaling: float) -> None:
    config = AdapterConfig(init=init)
    assert config.effective_ranks == ranks
    assert config.scaling == pytest.approx(scaling)


def test_lists_become_tuples_and_dict_is_json_ready() -> None:
    config = AdapterConfig(target_modules=["qkv"], blocks=[0, 1])
    assert config.target_modules == ("qkv",) and config.blocks == (0, 1)
    assert config.to_dict()["target_modules"] == ["qkv"]
    assert AdapterConfig(**config.to_dict()) == config
