"""RecycleLoRA: dual LoRA adapters initialised from a rank-revealing QR of pretrained ViT weights."""

__version__ = "0.1.0"
