"""Deformable attention's sampling at the paper's pixel-decoder shape, the formulations side by side.

The shape: 4 crops of 512 x 512 through a patch-16 ViT-L, so the deformable encoder's three levels are 64 x 64,
32 x 32 and 16 x 16 (5,376 queries), 8 heads of 32 channels, 4 points per level; the pixel decoder has 6 such
layers at 256 channels. Candidates, each against transformers' ``multi_scale_deformable_attention``
(``grid_sample`` per level):

- ``gather``: :func:`recyclelora.models.heads.deformable.deformable_sampling` (one weighted gather);
- ``compile(...)`` (``--compile``): ``torch.compile`` of either, and of the whole pixel decoder;
- the pixel decoder (6 layers, forward + backward) with transformers' modules and with ours.

Each row is the median of interleaved repeats; below the table, each candidate's first call (which compiles what
is compiled) and its largest difference from the reference relative to the reference's largest magnitude, for the
output and (forward + backward) for the gradients.

    python -m benchmarks.bench_deformable [--repeats 5] [--batch 4] [--compile]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    multi_scale_deformable_attention,
)

from benchmarks._timing import print_ratios, time_interleaved
from recyclelora.models.heads import HeadConfig, Mask2FormerHead
from recyclelora.models.heads.deformable import deformable_sampling
from recyclelora.models.heads.mask2former import mask2former_config

#: The three deformable levels of a 512 crop at patch 16 (strides 8, 16, 32), and the stride-4 map.
LEVELS = [(64, 64), (32, 32), (16, 16)]
STRIDE_4 = (128, 128)
HEADS, DIM, POINTS, CHANNELS, BACKBONE_CHANNELS = 8, 32, 4, 256, 1024

Sampler = Callable[..., torch.Tensor]


def sampling_inputs(batch: int, device: torch.device | None = None) -> list[torch.Tensor]:
    """Values, locations (a few beyond the borders) and attention weights at the paper's shape."""
    generator = torch.Generator().manual_seed(0)
    length = sum(h * w for h, w in LEVELS)
    value = torch.randn(batch, length, HEADS, DIM, generator=generator)
    locations = torch.rand(batch, length, HEADS, len(LEVELS), POINTS, 2, generator=generator) * 1.1 - 0.05
    attention = torch.rand(batch, length, HEADS, len(LEVELS), POINTS, generator=generator).softmax(-1)
    return [t.to(device) for t in (value, locations, attention)]


def sampling_call(sampler: Sampler, inputs: list[torch.Tensor], backward: bool) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        if not backward:
            with torch.no_grad():
                return [sampler(inputs[0], LEVELS, inputs[1], inputs[2])]
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = sampler(leaves[0], LEVELS, leaves[1], leaves[2])
        out.backward(torch.ones_like(out))
        return [out.detach()] + [t.grad for t in leaves]

    return run


def _decoders(batch: int) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor]]:
    """Our pixel decoder at the paper's sizes, transformers' with the same weights, and a ViT-L pyramid."""
    torch.manual_seed(0)
    config = HeadConfig(kind="mask2former", num_classes=19, channels=CHANNELS)
    ours = Mask2FormerHead((BACKBONE_CHANNELS,) * 4, config).model.pixel_decoder
    theirs = Mask2FormerPixelDecoder(mask2former_config(config), feature_channels=[BACKBONE_CHANNELS] * 4)
    theirs.load_state_dict(ours.state_dict())
    sizes = [STRIDE_4, *LEVELS]
    features = [torch.randn(batch, BACKBONE_CHANNELS, h, w) for h, w in sizes]
    return ours, theirs, features


def _decoder_run(decoder: torch.nn.Module, features: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        decoder.zero_grad(set_to_none=True)
        out = decoder(features).mask_features
        out.square().mean().backward()
        return [out.detach()] + [p.grad for p in decoder.parameters() if p.grad is not None]

    return run


def max_relative(results: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest ``max |a - b| / max |b|`` over pairs of tensors."""
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(results, reference, strict=True))


def _compare(title: str, candidates: dict[str, Callable[[], list[torch.Tensor]]], repeats: int) -> None:
    reference_name = next(iter(candidates))
    began = {name: time.perf_counter() for name in candidates}
    outputs = {}
    for name, fn in candidates.items():  # the first call compiles what is compiled: timed apart
        began[name] = time.perf_counter()
        outputs[name] = fn()
        began[name] = time.perf_counter() - began[name]
    seconds = time_interleaved(candidates, repeats, warmup=1)
    print_ratios(title, seconds, reference_name, {name: 1.0 for name in candidates if name != reference_name})
    for name in candidates:
        mine, reference = outputs[name], outputs[reference_name]
        line = f"  {name}: first call {began[name]:.1f} s, max relative difference: output "
        line += f"{max_relative(mine[:1], reference[:1]):.1e}"
        if len(mine) > 1:
            line += f", gradients {max_relative(mine[1:], reference[1:]):.1e}"
        Console().print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="add torch.compile candidates (compiling takes minutes)")
    args = parser.parse_args(argv)
    Console().print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    inputs = sampling_inputs(args.batch)
    samplers: dict[str, Sampler] = {"grid_sample": multi_scale_deformable_attention, "gather": deformable_sampling}
    if args.compile:
        samplers |= {f"compile({name})": torch.compile(fn, dynamic=False) for name, fn in list(samplers.items())}
    for backward in (False, True):
        runs = {name: sampling_call(fn, inputs, backward) for name, fn in samplers.items()}
        _compare(f"sampling, {'forward + backward' if backward else 'forward (no grad)'}", runs, args.repeats)
    ours, theirs, features = _decoders(args.batch)
    decoders = {"transformers' modules": _decoder_run(theirs, features), "ours": _decoder_run(ours, features)}
    if args.compile:
        decoders["compile(transformers' modules)"] = _decoder_run(torch.compile(theirs, dynamic=False), features)
    _compare("pixel decoder (6 layers), forward + backward", decoders, max(args.repeats // 2, 1))


if __name__ == "__main__":
    main()
