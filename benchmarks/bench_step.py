"""Training step and merged inference cost of dual adapters on a ViT-S, measured side by side.

- forward+backward of the ViT-S with RecycleLoRA adapters (r_main 32 + r_sub 4) against the same ViT with
  peft's LoRA at the same total rank (36) on the same layers, and against the frozen ViT (input grad only);
- forward of the merged model against the original timm model.

    python benchmarks/bench_step.py [--batch 8] [--img 224] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy

import timm
import torch
from peft import LoraConfig, get_peft_model

from benchmarks._timing import print_ratios, time_interleaved
from recyclelora import AdapterConfig, inject_adapters, merge_adapters

MODEL = "vit_small_patch14_dinov2"


def _step(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model.forward_features(x).float().square().mean().backward()

    return run


def _forward(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            model.forward_features(x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = timm.create_model(MODEL, pretrained=False, img_size=args.img).eval()
    x = torch.randn(args.batch, 3, args.img, args.img)

    ours = copy.deepcopy(base)
    config = AdapterConfig(rank_main=32, rank_sub=4)
    inject_adapters(ours, config)
    lora = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=36, lora_alpha=1, target_modules=r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
                   lora_dropout=0.0),
    )
    frozen = copy.deepcopy(base).requires_grad_(False)
    x_grad = x.clone().requires_grad_(True)  # so the frozen model still runs a backward pass
    trainable = {
        name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in (("ours", ours), ("lora", lora))
    }
    if trainable["ours"] != trainable["lora"]:
        raise SystemExit(f"adapter sizes differ: {trainable}")
    print(f"{MODEL}, batch {args.batch}, {args.img} px, {torch.get_num_threads()} threads; trainable: {trainable}")
    seconds = time_interleaved(
        {
            "peft LoRA r=36": _step(lora, x),
            "RecycleLoRA 32+4": _step(ours, x),
            "frozen ViT": _step(frozen, x_grad),
        },
        repeats=args.repeats,
    )
    print_ratios("forward+backward step", seconds, reference="peft LoRA r=36", targets={"RecycleLoRA 32+4": 1.10})

    merged = merge_adapters(ours).eval()
    seconds = time_interleaved(
        {"original timm": _forward(base, x), "merged RecycleLoRA": _forward(merged, x)}, repeats=args.repeats
    )
    print_ratios("inference forward", seconds, reference="original timm", targets={"merged RecycleLoRA": 1.02})


if __name__ == "__main__":
    main()
