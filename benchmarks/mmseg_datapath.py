"""mmseg 1.x's training pipeline of the G->CBM config over image/label pairs: the reference side of
``benchmarks/bench_datapath.py``, which runs this file with the Python of a separate environment holding
mmsegmentation 1.x and mmcv-lite 2.x (never the project's).

    python mmseg_datapath.py --pairs PAIRS.json [--threads 1]

``PAIRS.json`` lists ``[image, label]`` paths. Prints one JSON line (versions and one output's shapes), then
answers each ``pass`` line on stdin with one JSON line: seconds spent in the two loading steps (``decode``) and
in the rest (``transform``) over every pair once, in order. Stops at end of input.

mmseg 1.2's ``mmseg.utils`` imports ``mmcv.ops.point_sample`` at import time, and ``mmcv.ops/__init__`` loads
the compiled extension that mmcv-lite does not ship (``No module named 'mmcv._ext'``). The data transforms use
no op, so ``mmcv.ops`` is stood in by an empty package that loads only the pure-torch ``point_sample`` module.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import cv2
import mmcv
import numpy as np
import torch

CROP = (512, 512)
#: The published GTAV training pipeline of the G->CBM config (Rein's mmseg 1.x config), Pad included.
PIPELINE = [
    {"type": "LoadImageFromFile"},
    {"type": "LoadAnnotations"},
    {
        "type": "RandomChoiceResize",
        "scales": [int(512 * x * 0.1) for x in range(5, 21)],
        "resize_type": "ResizeShortestEdge",
        "max_size": 2048,
    },
    {"type": "RandomCrop", "crop_size": CROP, "cat_max_ratio": 0.75},
    {"type": "Pad", "size": CROP, "pad_val": {"img": 0, "seg": 255}},
    {"type": "RandomFlip", "prob": 0.5},
    {"type": "PhotoMetricDistortion"},
    {"type": "PackSegInputs"},
]
LOADING_STEPS = 2


def build_pipeline() -> list:
    """The transforms of :data:`PIPELINE`, built through mmseg's registry as its runner builds them."""
    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = [str(Path(mmcv.__file__).parent / "ops")]
    sys.modules["mmcv.ops"] = ops
    from mmcv.ops.point_sample import point_sample

    ops.point_sample = point_sample
    import mmseg.datasets.transforms  # noqa: F401  (registers mmseg's transforms)
    from mmengine.registry import DefaultScope
    from mmseg.registry import TRANSFORMS

    DefaultScope.get_instance("bench_datapath", scope_name="mmseg")
    return [TRANSFORMS.build(step) for step in PIPELINE]


def one_pass(pipeline: list, pairs: list[list[str]]) -> dict:
    """Every pair through ``pipeline`` once: seconds in the loading steps and in the rest, the last output."""
    decode = transform = 0.0
    for image, label in pairs:
        results = {"img_path": image, "seg_map_path": label, "reduce_zero_label": False, "seg_fields": []}
        start = time.perf_counter()
        for step in pipeline[:LOADING_STEPS]:
            results = step(results)
        loaded = time.perf_counter()
        for step in pipeline[LOADING_STEPS:]:
            results = step(results)
        done = time.perf_counter()
        decode, transform = decode + loaded - start, transform + done - loaded
    return {"decode": decode, "transform": transform, "output": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    np.random.seed(0)
    import mmseg

    pipeline = build_pipeline()
    pairs = json.loads(args.pairs.read_text())
    output = one_pass(pipeline, pairs[:1])["output"]
    ready = {
        "mmseg": mmseg.__version__,
        "mmcv": mmcv.__version__,
        "opencv": cv2.__version__,
        "inputs": [list(output["inputs"].shape), str(output["inputs"].dtype)],
        "gt_sem_seg": list(output["data_samples"].gt_sem_seg.data.shape),
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() == "pass":
            result = one_pass(pipeline, pairs)
            print(json.dumps({"decode": result["decode"], "transform": result["transform"]}), flush=True)


if __name__ == "__main__":
    main()
