"""One check of a paper preset on one GPU, about 8 minutes at most, printed as one table:

- training: optimiser steps per second and peak memory of the preset's step (batch of ``train.batch_size`` crops,
  AdamW with the recipe's parameter groups) in fp32, TF32 and bf16 autocast;
- the share of a step's device time spent in the deformable attention's sampling (forward and backward, from
  ``torch.profiler``: ``grid_sample`` on a GPU, the gather formulation on a CPU), the head's largest part on CPU;
- that sampling alone at the paper's pixel-decoder shape, transformers' ``grid_sample`` and our gather
  formulation side by side (forward + backward calls per second), which decides whether a GPU should gather too;
- evaluation: sliding windows per second over a Cityscapes-sized 1024 x 2048 image (the preset's window and
  stride), fp32 and bf16;
- ONNX: the model exported at one window and its parity with torch on onnxruntime's CUDA provider (where the
  installed onnxruntime has none, the CPU provider; the table says which).

    python -m benchmarks.gpu_check [--preset paper-g2cbm] [--steps 10] [--out gpu_check.json] [--tiny]

Weights are random (``weights: none``): timings need no download. ``--tiny`` shrinks the model, crops and image so
the same code runs on a CPU in seconds (the slow test lane runs it, so the check never rots); its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from benchmarks.bench_deformable import max_relative, sampling_call, sampling_inputs
from pipeline.presets import apply_preset
from recyclelora.config import RunConfig, read_params, run_config
from recyclelora.eval.predictors import OnnxPredictor, TorchPredictor
from recyclelora.eval.sliding import SlidingWindowConfig, slide_inference, window_grid
from recyclelora.export.onnx import export_onnx, verify_onnx
from recyclelora.models.build import build_segmentor
from recyclelora.models.heads.deformable import PROFILE_LABEL, deformable_sampling
from recyclelora.models.segmentor import Segmentor
from recyclelora.train.optim import build_optimizer

PROJECT = Path(__file__).resolve().parents[1]
#: Cityscapes' frame, the size the sliding windows are counted over.
EVAL_IMAGE = (1024, 2048)
#: What ``--tiny`` sets over the preset: a 4-block, 64-wide ViT and a small Mask2Former on 64 px crops.
TINY = {
    "model": {"backbone": {"model_kwargs": {"depth": 4, "embed_dim": 64, "num_heads": 2}, "out_indices": [0, 1, 2, 3]},
              "head": {"channels": 32, "hidden_dim": 32, "num_heads": 4, "num_queries": 8, "pixel_decoder_layers": 1,
                       "decoder_layers": 2, "dim_feedforward": 64, "pixel_decoder_feedforward_dim": 64,
                       "train_num_points": 256},
              "adapter": {"rank_main": 4, "rank_sub": 2}},
    "data": {"transform": {"crop_size": [64, 64]}},
    "train": {"batch_size": 2},
    "eval": {"crop": 64, "stride": 43},
}  # fmt: skip
TINY_EVAL_IMAGE = (128, 256)
#: transformers' sampling ops (self time); the gather formulation is counted by its profiler label (total time).
SAMPLING_OPS = ("aten::grid_sampler_2d", "aten::grid_sampler_2d_backward")


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) and key != "model_kwargs" else value
    return out


def preset_config(preset: str, tiny: bool) -> RunConfig:
    """The preset applied over the repository's params.yaml (in a scratch copy), with random backbone weights."""
    with tempfile.TemporaryDirectory() as scratch:
        params = Path(scratch) / "params.yaml"
        shutil.copy(PROJECT / "params.yaml", params)
        shutil.copytree(PROJECT / "presets", Path(scratch) / "presets")
        apply_preset(params, preset)
        raw = _merge(read_params(params), {"model": {"backbone": {"weights": "none"}}})
        if tiny:
            raw = _merge(raw, TINY)
        return run_config(raw, params)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    _synchronize(device)
    return (time.perf_counter() - began) / calls


def _set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _training_step(model: Segmentor, config: RunConfig, device: torch.device, bf16: bool) -> Callable[[], None]:
    optimizer = build_optimizer(model, config.model, config.train)
    height, width = config.data.transform.crop_size
    batch = config.train.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=generator).to(device)
    labels = torch.randint(0, config.model.head.num_classes, (batch, height, width), generator=generator).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model.forward_train(images, labels)["loss"]
        loss.backward()
        optimizer.step()

    return step


def _peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_training(config: RunConfig, device: torch.device, steps: int) -> list[dict[str, Any]]:
    """Steps per second and peak memory in fp32, TF32 and bf16 (a fresh model each, from one seed)."""
    rows = []
    for precision in ("fp32", "tf32", "bf16"):
        _set_tf32(precision == "tf32")
        torch.manual_seed(0)
        model = build_segmentor(config.model).model.to(device).train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _seconds_per_call(_training_step(model, config, device, precision == "bf16"), device, steps)
        rows.append({"what": f"train step, {precision}", "per_second": 1 / seconds, "unit": "steps/s",
                     "peak_memory_gib": _peak_memory_gib(device)})  # fmt: skip
        del model
    _set_tf32(False)
    return rows


def sampling_share(config: RunConfig, device: torch.device) -> dict[str, Any]:
    """Share of one fp32 step's self device time (CPU time on a CPU) in the deformable sampling, forward and
    backward."""
    torch.manual_seed(0)
    model = build_segmentor(config.model).model.to(device).train()
    step = _training_step(model, config, device, bf16=False)
    step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        step()
        _synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = {event.key: event for event in profile.key_averages()}
    total = sum(getattr(event, attribute) for event in events.values())
    sampling = sum(getattr(events[op], attribute) for op in SAMPLING_OPS if op in events)
    if PROFILE_LABEL in events:
        sampling += events[PROFILE_LABEL].cpu_time_total
    share = sampling / max(total, 1e-9)
    return {"what": "deformable sampling (fwd + bwd), share of a step", "per_second": None,
            "unit": f"{share:.1%}", "share": share}  # fmt: skip


def compare_sampling(device: torch.device, batch: int, calls: int) -> list[dict[str, Any]]:
    """Forward + backward calls per second of transformers' ``grid_sample`` sampling and of the gather formulation
    at the paper's pixel-decoder shape, with the gather's largest difference relative to the largest magnitude."""
    inputs = sampling_inputs(batch, device)
    rows, reference = [], None
    for name, sampler in (("grid_sample", multi_scale_deformable_attention), ("gather", deformable_sampling)):
        call = sampling_call(sampler, inputs, backward=True)
        results = call()
        reference = reference or results
        difference = max_relative(results, reference)
        rows.append({"what": f"deformable sampling fwd + bwd, batch {batch}, {name}",
                     "per_second": 1 / _seconds_per_call(call, device, calls, 1), "unit": "calls/s",
                     "max_rel_diff": difference})  # fmt: skip
    return rows


def measure_sliding(config: RunConfig, device: torch.device, image_size: tuple[int, int], calls: int) -> list[dict]:
    """Sliding windows per second over one ``image_size`` image, fp32 and bf16."""
    torch.manual_seed(0)
    model = build_segmentor(config.model).model.to(device).eval()
    windows = SlidingWindowConfig(crop=(config.eval.crop,) * 2, stride=(config.eval.stride,) * 2)
    count = len(window_grid(*image_size, windows.crop, windows.stride))
    image = torch.randn(1, 3, *image_size, device=device)
    rows = []
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        predict = TorchPredictor(model, device, amp_dtype=amp)
        classes = config.model.head.num_classes
        seconds = _seconds_per_call(lambda: slide_inference(predict, image, classes, windows), device, calls, 1)
        rows.append({"what": f"sliding windows {image_size[0]}x{image_size[1]}, {name}",
                     "per_second": count / seconds, "unit": "windows/s", "peak_memory_gib": None})  # fmt: skip
    return rows


def onnx_parity(config: RunConfig, device: torch.device, folder: Path) -> dict[str, Any]:
    """Export at one window on the CPU and compare on the CUDA provider (else the CPU one)."""
    import onnxruntime

    torch.manual_seed(0)
    model = build_segmentor(config.model).model.eval()
    example = torch.randn(1, 3, config.eval.crop, config.eval.crop)
    path = export_onnx(model, folder / "model.onnx", example)
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    parity = verify_onnx(model.to(device), path, example.to(device), providers=[provider])
    predictor = OnnxPredictor(path, [provider])
    seconds = _seconds_per_call(lambda: predictor(example), device, 3, 1)
    return {"what": f"ONNX window, {provider}", "per_second": 1 / seconds, "unit": "windows/s",
            "max_rel_diff": parity.max_rel_diff, "argmax_agreement": parity.argmax_agreement}  # fmt: skip


def render(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("measurement", "rate", "peak memory", "parity"):
        table.add_column(column)
    for row in rows:
        rate = f"{row['per_second']:.3g} {row['unit']}" if row.get("per_second") else row["unit"]
        memory = f"{row['peak_memory_gib']:.1f} GiB" if row.get("peak_memory_gib") is not None else ""
        parity = f"rel {row['max_rel_diff']:.2e}" if "max_rel_diff" in row else ""
        if "argmax_agreement" in row:
            parity += f", argmax {row['argmax_agreement']:.4%}"
        table.add_row(row["what"], rate, memory, parity)
    return table


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-g2cbm")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the code, not speed")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = preset_config(args.preset, args.tiny)
    image = TINY_EVAL_IMAGE if args.tiny else EVAL_IMAGE
    began = time.perf_counter()
    rows = measure_training(config, device, args.steps)
    rows.append(sampling_share(config, device))
    rows += compare_sampling(device, batch=1 if args.tiny else config.train.batch_size, calls=2 if args.tiny else 10)
    rows += measure_sliding(config, device, image, calls=2)
    with tempfile.TemporaryDirectory() as folder:
        rows.append(onnx_parity(config, device, Path(folder)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    title = f"{args.preset}{' (tiny)' if args.tiny else ''} on {name}, {time.perf_counter() - began:.0f} s"
    Console().print(render(rows, title))
    if args.out:
        args.out.write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
