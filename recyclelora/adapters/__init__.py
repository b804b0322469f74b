"""Dual LoRA adapters (RecycleLoRA) and the single-adapter baselines, for timm ViTs."""

from recyclelora.adapters.cache import CacheEntry, read_cache_metadata
from recyclelora.adapters.config import INIT_METHODS, AdapterConfig
from recyclelora.adapters.factors import ALGORITHM_VERSION, Factors, lora_factors, rrqr_factors, svd_factors
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

__all__ = [
    "ALGORITHM_VERSION", "INIT_METHODS", "AdapterConfig", "CacheEntry", "DualLoRALinear", "Factors",
    "adapter_layers", "adapter_param_groups", "adapter_state_dict", "compute_factors", "find_target_linears",
    "inject_adapters", "load_adapter_state_dict", "lora_factors", "merge_adapters", "read_cache_metadata",
    "rrqr_factors", "svd_factors",
]  # fmt: skip
