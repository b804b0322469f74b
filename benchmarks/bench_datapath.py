"""The training data path at the paper's resolution, side by side with mmseg's, and the data stage's speed.

    python -m benchmarks.bench_datapath [--frames 12] [--rounds 10] [--mmseg-python PYTHON]

Writes ``--frames`` GTAV-shaped frames (1914 x 1052) in GTAV's distributed layout (``images/00001.png`` RGB,
``labels/00001.png`` palette PNGs of Cityscapes label ids) into a scratch folder: scenes of the embedded
benchmark's source domain (``recyclelora.data.synth``: large flat regions) with Gaussian sensor noise of
``--noise`` grey levels, so that the PNGs take megabytes as rendered frames do (2.3 MB at the default).
Then prints

- frames per second of ``prepare_dataset("gta5")`` on them (each run into a fresh folder) and of
  ``check_manifest`` on the prepared manifest, with one worker and with every usable core;
- seconds per training sample, one process, no DataLoader workers: ours as training reads it
  (``SegmentationDataset`` with the preset's ``TrainTransform``: decode, then transforms) against mmseg 1.x's
  own pipeline of the same config on the same files (``benchmarks/mmseg_datapath.py``, run by
  ``--mmseg-python``, the Python of a separate environment with mmsegmentation and mmcv-lite), one pass over
  every frame each, interleaved round by round; the goal is ours <= 1.0 x mmseg's seconds, i.e. at least its
  samples per second per worker. mmseg's side ends at ``PackSegInputs`` (uint8; it normalises on the GPU in
  ``SegDataPreProcessor``); ours ends normalised (float32), as our workers ship it;
- the image file's decode alone by Pillow (as ``load_pair`` reads it, and without its ``convert("RGB")``)
  and by OpenCV (as mmseg's ``LoadImageFromFile``, and straight to RGB), interleaved;
- the data workers one GPU needs at the preset's batch for each ``--step-seconds`` (assumed GPU step times).

Every process uses ``--threads`` torch and OpenCV threads (1: the cost per worker).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from benchmarks._timing import print_ratios, time_interleaved
from benchmarks.bench_train import run_config
from recyclelora.data.check import check_manifest
from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.labelmaps import CITYSCAPES_ID_TO_TRAINID
from recyclelora.data.manifest import read_manifest
from recyclelora.data.prepare import default_workers, prepare_dataset
from recyclelora.data.synth import render_image
from recyclelora.data.synth_config import SOURCE_DOMAIN
from recyclelora.data.transforms import SegmentationTransform, TrainTransform

PROJECT = Path(__file__).resolve().parents[1]
GTAV_SIZE = (1914, 1052)  # width, height
WORKER = Path(__file__).with_name("mmseg_datapath.py")


def write_gtav_frames(raw: Path, frames: int, noise: float) -> None:
    """``frames`` GTAV-shaped pairs under ``raw`` (see the module docstring), trainIds written back as ids."""
    to_id = np.zeros(256, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        to_id[train_id] = label_id
    palette = np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist()
    for folder in ("images", "labels"):
        (raw / folder).mkdir(parents=True, exist_ok=True)
    for index in range(frames):
        image, train_ids = render_image(0, SOURCE_DOMAIN, "train", index, *GTAV_SIZE)
        noisy = image + np.random.default_rng(index).normal(0, noise, image.shape)
        Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(
            raw / f"images/{index + 1:05d}.png"
        )
        label = Image.frombytes("P", GTAV_SIZE, to_id[train_ids].tobytes())
        label.putpalette(palette)
        label.save(raw / f"labels/{index + 1:05d}.png")


def pillow(path: str, convert: bool) -> np.ndarray:
    """An RGB PNG decoded by Pillow, with ``convert("RGB")`` as ``load_pair`` does or without (same pixels)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB") if convert else image)


class TimedTransform:
    """``transform``, adding the seconds each call takes to :attr:`seconds`."""

    def __init__(self, transform: SegmentationTransform) -> None:
        self.transform, self.seconds = transform, 0.0

    def __call__(self, image, label, rng):
        start = time.perf_counter()
        try:
            return self.transform(image, label, rng)
        finally:
            self.seconds += time.perf_counter() - start


class MmsegWorker:
    """``benchmarks/mmseg_datapath.py`` running in mmseg's environment, one pass over the pairs per call."""

    def __init__(self, python: str, pairs: Path, threads: int) -> None:
        command = [python, str(WORKER), "--pairs", str(pairs), "--threads", str(threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._reply()
        self.decode: list[float] = []
        self.transform: list[float] = []

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(
                f"error: {WORKER.name} stopped (exit code {self.process.wait()}); see its error above"
            )
        return json.loads(line)

    def __call__(self) -> None:
        self.process.stdin.write("pass\n")
        self.process.stdin.flush()
        reply = self._reply()
        self.decode.append(reply["decode"])
        self.transform.append(reply["transform"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def rate_table(title: str, seconds: dict[str, float], frames: int) -> None:
    table = Table(title=title)
    for column in ("run", "seconds", "frames per second"):
        table.add_column(column)
    for name, value in seconds.items():
        table.add_row(name, f"{value:.2f}", f"{frames / value:.2f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved passes over the frames per side")
    parser.add_argument("--noise", type=float, default=1.0, help="sensor noise (grey levels) on the frames")
    parser.add_argument("--preset", default="paper-g2cbm")
    parser.add_argument("--mmseg-python", default="/work/venv-mmseg/bin/python")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prepare-repeats", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, nargs="+", default=[0.25, 1.0])
    args = parser.parse_args()
    if not Path(args.mmseg_python).is_file():
        raise SystemExit(
            f"error: --mmseg-python {args.mmseg_python} does not exist: make mmseg's environment with "
            "python -m venv --system-site-packages /work/venv-mmseg && /work/venv-mmseg/bin/pip install --no-deps "
            "mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine==0.10.7 addict yapf termcolor ftfy"
        )
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    run = run_config(PROJECT / "params.yaml", args.preset, None, None)
    cores = default_workers()
    with tempfile.TemporaryDirectory() as scratch:
        raw, work = Path(scratch) / "raw", Path(scratch)
        write_gtav_frames(raw, args.frames, args.noise)
        image_mb = np.mean([p.stat().st_size for p in raw.glob("images/*.png")]) / 1e6
        label_kb = np.mean([p.stat().st_size for p in raw.glob("labels/*.png")]) / 1e3
        print(
            f"{args.frames} frames {GTAV_SIZE[0]} x {GTAV_SIZE[1]}: images {image_mb:.2f} MB, labels {label_kb:.1f} kB "
            f"(mean PNG sizes); {cores} usable cores; torch and OpenCV threads {args.threads}"
        )

        outs: list[Path] = []

        def prepare(workers: int) -> Callable[[], object]:
            def fresh() -> object:
                outs.append(work / f"prepared{len(outs)}")
                return prepare_dataset("gta5", raw, outs[-1], workers=workers)

            return fresh

        seconds = time_interleaved(
            {"prepare, 1 worker": prepare(1), f"prepare, {cores} workers": prepare(cores)},
            repeats=args.prepare_repeats,
            warmup=0,
        )
        manifest = outs[-1] / "gta5_train.parquet"
        seconds |= time_interleaved(
            {f"data check, {w} worker{'s' * (w > 1)}": (lambda w=w: check_manifest(manifest, workers=w, progress=False))
             for w in (1, cores)},
            repeats=3,
        )  # fmt: skip
        rate_table("the data stage on GTAV-shaped frames", seconds, args.frames)

        timed = TimedTransform(TrainTransform(run.data.transform))
        dataset = SegmentationDataset(manifest, timed)
        pairs = work / "pairs.json"
        pairs.write_text(json.dumps([[str(k.sample.image), str(k.sample.label)] for k in dataset.kept]))
        mmseg = MmsegWorker(args.mmseg_python, pairs, args.threads)
        print(f"mmseg side: {mmseg.ready}")
        ours_total: list[float] = []
        ours_transform: list[float] = []

        def ours() -> None:
            dataset.set_epoch(dataset.epoch + 1)
            timed.seconds = 0.0
            start = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            ours_total.append(time.perf_counter() - start)
            ours_transform.append(timed.seconds)

        try:
            passes = time_interleaved({"mmseg 1.x pipeline": mmseg, "recyclelora": ours}, repeats=args.rounds)
        finally:
            mmseg.close()
        per_sample = {name: value / args.frames for name, value in passes.items()}
        print_ratios(
            f"seconds per training sample (median of {args.rounds} interleaved passes over {args.frames} frames, "
            f"one process)", per_sample, reference="mmseg 1.x pipeline", targets={"recyclelora": 1.0},
        )  # fmt: skip
        ratios = np.array(ours_total[1:]) / (np.array(mmseg.decode[1:]) + np.array(mmseg.transform[1:]))
        print(f"ratio of each interleaved pass (recyclelora / mmseg): {np.round(ratios, 3).tolist()}")
        mm_decode, mm_transform = np.median(mmseg.decode[1:]), np.median(mmseg.transform[1:])
        ours_transform_s = float(np.median(ours_transform[1:]))
        split = Table(title="where a sample's time goes (median seconds per sample)")
        for column in ("side", "decode (image + label)", "transforms", "samples per second"):
            split.add_column(column)
        split.add_row("mmseg 1.x", f"{mm_decode / args.frames:.4f}", f"{mm_transform / args.frames:.4f}",
                      f"{1 / per_sample['mmseg 1.x pipeline']:.2f}")  # fmt: skip
        split.add_row("recyclelora", f"{(passes['recyclelora'] - ours_transform_s) / args.frames:.4f}",
                      f"{ours_transform_s / args.frames:.4f}", f"{1 / per_sample['recyclelora']:.2f}")  # fmt: skip
        Console().print(split)

        images = [str(sample.image) for sample in read_manifest(manifest)]

        def decode(read: Callable[[str], object]) -> Callable[[], None]:
            def every_image() -> None:
                for path in images:
                    read(path)

            return every_image

        decoders = {
            "Pillow open + convert('RGB') (load_pair)": lambda p: pillow(p, convert=True),
            "Pillow open, no convert": lambda p: pillow(p, convert=False),
            "OpenCV imread, BGR (mmseg)": cv2.imread,
            "OpenCV imread, IMREAD_COLOR_RGB": lambda p: cv2.imread(p, cv2.IMREAD_COLOR_RGB),
        }
        seconds = time_interleaved({name: decode(read) for name, read in decoders.items()}, repeats=5)
        print_ratios("decoding the image files", {k: v / len(images) for k, v in seconds.items()},
                     reference="Pillow open + convert('RGB') (load_pair)", targets={})  # fmt: skip

    batch = run.train.batch_size
    workers = Table(
        title=f"data workers one GPU needs at batch {batch} (ceil(batch x seconds per sample / step))"
    )
    for column in ("assumed GPU step (s)", "recyclelora", "mmseg 1.x"):
        workers.add_column(column)
    for step in args.step_seconds:
        workers.add_row(f"{step}", *(f"{math.ceil(batch * per_sample[name] / step)}"
                                     for name in ("recyclelora", "mmseg 1.x pipeline")))  # fmt: skip
    Console().print(workers)


if __name__ == "__main__":
    main()
