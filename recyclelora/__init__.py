"""RecycleLoRA: dual LoRA adapters initialised from a rank-revealing QR of pretrained ViT weights.

The names below are imported on first use, so ``import recyclelora`` (and the CLI's ``--help``) does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig", "DualLoRALinear", "Factors", "adapter_param_groups", "adapter_state_dict", "effective_rank",
    "inject_adapters", "load_adapter_state_dict", "merge_adapters", "rank_report", "rrqr_factors",
    "subspace_similarity",
]  # fmt: skip

__getattr__, __dir__ = lazy_attributes(
    __name__,
    names_from("recyclelora.analysis", ("effective_rank", "rank_report", "subspace_similarity"))
    | names_from("recyclelora.adapters", (
        "AdapterConfig", "DualLoRALinear", "Factors", "adapter_param_groups", "adapter_state_dict",
        "inject_adapters", "load_adapter_state_dict", "merge_adapters", "rrqr_factors",
    )),
)  # fmt: skip

if TYPE_CHECKING:
    from recyclelora.adapters import (
        AdapterConfig,
        DualLoRALinear,
        Factors,
        adapter_param_groups,
        adapter_state_dict,
        inject_adapters,
        load_adapter_state_dict,
        merge_adapters,
        rrqr_factors,
    )
    from recyclelora.analysis import effective_rank, rank_report, subspace_similarity
