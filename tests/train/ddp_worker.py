"""Run by ``torchrun`` from test_ddp.py: trains the tiny config (global batch 4) on a manifest into a folder."""

from __future__ import annotations

import dataclasses
import sys

from recyclelora.data.transform_config import TrainTransformConfig
from recyclelora.train.config import DataConfig
from recyclelora.train.loop import train
from tests.helpers import tiny_model_config, tiny_train_config

if __name__ == "__main__":
    manifest, out, grad_accum, init = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # one scale and crops inside the image: every process sees equally many labelled pixels, so the mean of the
    # per-process mean losses is the global mean loss
    transform = TrainTransformConfig(crop_size=(42, 42), base_size=48, scale_ratios=(1.0,))
    model_config = tiny_model_config()
    model_config = dataclasses.replace(model_config, adapter=dataclasses.replace(model_config.adapter, init=init))
    train(model_config, tiny_train_config(iterations=3, batch_size=4, grad_accum=grad_accum, checkpoint_every=0),
          DataConfig(train=(manifest,), transform=transform), out, progress=False)  # fmt: skip
