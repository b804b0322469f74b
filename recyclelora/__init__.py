"""RecycleLoRA: dual LoRA adapters initialised from a rank-revealing QR of pretrained ViT weights."""

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

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig", "DualLoRALinear", "Factors", "adapter_param_groups", "adapter_state_dict", "effective_rank",
    "inject_adapters", "load_adapter_state_dict", "merge_adapters", "rank_report", "rrqr_factors",
    "subspace_similarity",
]  # fmt: skip
