"""Typed, validated configuration of the dual adapters (imitating peft's ``LoraConfig``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from recyclelora.adapters.initialisers import INITIALISERS, Initialiser
from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

INIT_METHODS: tuple[str, ...] = tuple(INITIALISERS)


@dataclass(frozen=True)
class AdapterConfig:
    """Where and how dual adapters are attached to a ViT; ``init`` names an entry of
    :data:`~recyclelora.adapters.initialisers.INITIALISERS`, which decides the ranks the layers get."""

    rank_main: int = field(
        default=32, metadata={"help": "rank of the main adapter, on the minor RRQR directions", "ge": 0}
    )
    rank_sub: int = field(
        default=4, metadata={"help": "rank of the sub adapter, on the major RRQR directions", "ge": 0}
    )
    alpha: float = field(
        default=1.0, metadata={"help": "scaling s = alpha / (rank_main + rank_sub)", "gt": 0}
    )
    init: str = field(
        default="rrqr",
        metadata={
            "help": "initialiser: " + ", ".join(f"{i.name} ({i.label})" for i in INITIALISERS.values()),
            "choices": INIT_METHODS,
        },
    )
    target_modules: tuple[str, ...] = field(
        default=("qkv", "proj", "fc1", "fc2"),
        metadata={
            "help": "linears adapted in every block, matched as dotted suffixes of the names inside it"
        },
    )
    blocks: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "indices of the adapted blocks (negative from the end); null = all"},
    )
    lr_mult_main: float = field(
        default=1.0,
        metadata={"help": "learning-rate multiplier of the main adapter (the paper: x1.0)", "ge": 0},
    )
    lr_mult_sub: float = field(
        default=0.5,
        metadata={"help": "learning-rate multiplier of the sub adapter (the paper: x0.5)", "ge": 0},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the adapters", "ge": 0})

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))
        validate_fields(self)
        if self.effective_ranks == (0, 0):
            raise InvalidInputError(
                f"init={self.init!r} with rank_main={self.rank_main}, rank_sub={self.rank_sub} trains nothing: "
                "give the adapter a positive rank"
            )
        if not self.target_modules or not all(self.target_modules):
            raise InvalidInputError(f"target_modules must be non-empty names, got {self.target_modules!r}")
        if self.blocks == ():
            raise InvalidInputError(f"blocks must be None (all) or a non-empty list, got {self.blocks!r}")

    @property
    def initialiser(self) -> Initialiser:
        """The registry entry of ``init``."""
        return INITIALISERS[self.init]

    @property
    def effective_ranks(self) -> tuple[int, int]:
        """``(main, sub)`` ranks the layers get under this initialiser."""
        return self.initialiser.ranks(self.rank_main, self.rank_sub)

    @property
    def scaling(self) -> float:
        """``s = alpha / (r_main + r_sub)`` over the effective ranks."""
        return self.alpha / sum(self.effective_ranks)

    def to_dict(self) -> dict:
        """Plain-JSON form (lists for tuples)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["blocks"] = None if self.blocks is None else list(self.blocks)
        return data
