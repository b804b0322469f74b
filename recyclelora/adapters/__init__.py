"""Dual LoRA adapters (RecycleLoRA) and the single-adapter baselines, for timm ViTs.

The names below are imported on first use: ``recyclelora.adapters.config`` (``AdapterConfig``,
``INIT_METHODS``) stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from

__all__ = [
    "ALGORITHM_VERSION", "INIT_METHODS", "AdapterConfig", "CacheEntry", "DualLoRALinear", "Factors",
    "adapter_layers", "adapter_param_groups", "adapter_state_dict", "compute_factors", "find_target_linears",
    "inject_adapters", "load_adapter_state_dict", "lora_factors", "merge_adapters", "read_cache_metadata",
    "rrqr_factors", "svd_factors",
]  # fmt: skip

__getattr__, __dir__ = lazy_attributes(
    __name__,
    names_from("recyclelora.adapters.cache", ("CacheEntry", "read_cache_metadata"))
    | names_from("recyclelora.adapters.config", ("INIT_METHODS", "AdapterConfig"))
    | names_from("recyclelora.adapters.factors", (
        "ALGORITHM_VERSION", "Factors", "lora_factors", "rrqr_factors", "svd_factors",
    ))
    | names_from("recyclelora.adapters.init", ("compute_factors",))
    | names_from("recyclelora.adapters.inject", (
        "adapter_layers", "adapter_param_groups", "adapter_state_dict", "find_target_linears",
        "inject_adapters", "load_adapter_state_dict", "merge_adapters",
    ))
    | names_from("recyclelora.adapters.layer", ("DualLoRALinear",)),
)  # fmt: skip

if TYPE_CHECKING:
    from recyclelora.adapters.cache import CacheEntry, read_cache_metadata
    from recyclelora.adapters.config import INIT_METHODS, AdapterConfig
    from recyclelora.adapters.factors import (
        ALGORITHM_VERSION,
        Factors,
        lora_factors,
        rrqr_factors,
        svd_factors,
    )
    from recyclelora.adapters.init import compute_factors
    from recyclelora.adapters.inject import (
        adapter_layers,
        adapter_param_groups,
        adapter_state_dict,
        find_target_linears,
        inject_adapters,
        load_adapter_state_dict,
        merge_adapters,
    )
    from recyclelora.adapters.layer import DualLoRALinear
