"""The one check of config values (recyclelora.validation): types against hints, bounds and choices declared
in field metadata, one-line messages; and every config dataclass frozen and declaring only known rules."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.params import BaseConfig, DatasetsConfig, ExportConfig
from recyclelora.adapters.config import AdapterConfig
from recyclelora.config import EvalConfig, RunConfig
from recyclelora.data.prepare import PrepareConfig
from recyclelora.data.synth_config import SynthConfig
from recyclelora.data.transform_config import EvalTransformConfig, ResizeConfig, TrainTransformConfig
from recyclelora.eval.sliding import SlidingWindowConfig
from recyclelora.models.backbone import BackboneConfig
from recyclelora.models.config import ModelConfig
from recyclelora.models.heads import HeadConfig
from recyclelora.train.config import DataConfig, TrainConfig
from recyclelora.validation import BOUNDS, check_value, validate_fields

CONFIGS = (
    AdapterConfig, BackboneConfig, BaseConfig, DataConfig, DatasetsConfig, EvalConfig, EvalTransformConfig,
    ExportConfig, HeadConfig, ModelConfig, PrepareConfig, ResizeConfig, RunConfig, SlidingWindowConfig,
    SynthConfig, TrainConfig, TrainTransformConfig,
)  # fmt: skip


@dataclass(frozen=True)
class Example:
    count: int = field(default=1, metadata={"help": "how many", "ge": 1})
    share: float = field(default=0.5, metadata={"gt": 0, "le": 1})
    limit: float | None = field(default=None, metadata={"gt": 0})
    size: tuple[int, int] = field(default=(2, 2), metadata={"ge": 1})
    mode: Literal["a", "b"] = "a"
    name: str = field(default="x", metadata={"choices": ("x", "y")})
    flag: bool = False

    def __post_init__(self) -> None:
        validate_fields(self)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "Example.count must be an integer >= 1, got 0"),
        ({"count": 2.0}, "Example.count must be an integer >= 1, got 2.0"),
        ({"count": "3"}, "Example.count must be an integer >= 1, got '3'"),
        ({"count": True}, "Example.count must be an integer >= 1, got True"),
        ({"share": 0}, "Example.share must be a number in (0, 1], got 0"),
        ({"share": 1.5}, "Example.share must be a number in (0, 1], got 1.5"),
        ({"share": False}, "Example.share must be a number in (0, 1], got False"),
        ({"limit": -1.0}, "Example.limit must be a number > 0 or null, got -1.0"),
        (
            {"size": (2, 0)},
            "Example.size must be a list of 2 (an integer, an integer), each >= 1, got (2, 0)",
        ),
        ({"size": (2,)}, "Example.size must be a list of 2 (an integer, an integer), each >= 1, got (2,)"),
        ({"mode": "c"}, "Example.mode must be one of ['a', 'b'], got 'c'"),
        ({"name": "z"}, "Example.name must be one of ['x', 'y'], got 'z'"),
        ({"flag": 1}, "Example.flag must be true or false, got 1"),
    ],
)
def test_a_wrong_type_or_a_broken_rule_names_field_rule_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Example(**kwargs)


def test_valid_values_pass() -> None:
    config = Example(count=3, share=1, limit=2.5, size=(1, 9), mode="b", name="y", flag=True)
    assert (config.count, config.share, config.limit, config.size) == (3, 1, 2.5, (1, 9))
    assert Example(limit=None).limit is None


def test_the_prefix_replaces_the_class_name_and_single_values_are_checked_alike() -> None:
    @dataclass(frozen=True)
    class Prefixed:
        count: int = field(default=1, metadata={"ge": 1})

        def __post_init__(self) -> None:
            validate_fields(self, "train")

    with pytest.raises(ValueError, match=r"^train\.count must be an integer >= 1, got 0$"):
        Prefixed(count=0)
    with pytest.raises(ValueError, match=r"^data\.subset\.a must be an integer >= 1, got True$"):
        check_value(True, int, "data.subset.a", {"ge": 1})
    check_value(4, int, "data.subset.a", {"ge": 1})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_frozen_and_declares_only_known_rules(config: type) -> None:
    params = config.__dataclass_params__
    assert params.frozen, f"{config.__name__} is mutable"
    for item in dataclasses.fields(config):
        unknown = set(item.metadata) - {"help", "choices", *BOUNDS}
        assert not unknown, f"{config.__name__}.{item.name} declares unknown rule(s) {unknown}"


def test_head_config_is_frozen_with_its_derived_channels() -> None:
    config = HeadConfig(kind="light")
    assert config.channels == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.channels = 64  # type: ignore[misc]
