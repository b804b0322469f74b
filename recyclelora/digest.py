"""SHA-256 digests of tensors and of a module's state: what the init cache and the weights stage record to tell
one pretrained backbone from another."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 over dtype, shape and raw bytes of a tensor."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    if data.numel():
        digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the sorted names and per-tensor hashes of a module's state dict."""
    entries = {name: tensor_sha256(tensor) for name, tensor in module.state_dict().items()}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
