"""The catalogue of bad input, each case through the real CLI (``recyclelora-cli ...``, in-process): exit code 1,
one ``error:`` line on stderr naming what is wrong, no traceback, and nothing half-written. ``--debug`` (or
``RECYCLELORA_DEBUG=1``) shows the traceback instead."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from pipeline.cli import app as pipeline_app
from recyclelora.cli.common import BUG_REPORT, DEBUG_ENV
from recyclelora.cli.main import app
from recyclelora.config import ParamsError
from recyclelora.data.download import GTA5_PARTS
from recyclelora.errors import InvalidInputError
from recyclelora.models import BackboneConfig, ModelConfig, build_segmentor, save_segmentor
from recyclelora.train.state import STATE_FILE
from tests.cli import TINY_VIT, runner, save_tiny_checkpoint, tiny_config, write_dataset
from tests.data.test_download import zip_bomb, zip_of_zeros
from tests.data.test_images import png_chunk, write_huge_png
from tests.data.test_manifest import body_end as manifest_body_end
from tests.local_server import serve_replies
from tests.models.test_checkpoint_digest import flip_bytes, largest_tensor

PROJECT = Path(__file__).resolve().parents[2]
#: MLflow's own log lines (database creation, system metrics) that stages print besides their error.
#: First argument of a case run through the pipeline's command line (``python -m pipeline``), not the library's.
PIPELINE = "python -m pipeline"
MLFLOW_LOG = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) mlflow[.\w]*: ")


@pytest.fixture(scope="module")
def train_params(tiny_benchmark: dict) -> dict:
    """A 2-step run of a tiny model on the tiny benchmark, checkpointed at every step."""
    return {
        "base": {"seed": 1},
        "data": {"train": [str(tiny_benchmark["synth_src"]["train"])],
                 "transform": {"crop_size": [42, 42], "base_size": 48}},
        "model": {"backbone": {"weights": "none", "img_size": 56, "model_kwargs": dict(TINY_VIT)},
                  "head": {"kind": "light", "channels": 32}, "adapter": {"rank_main": 4, "rank_sub": 2}},
        "train": {"iterations": 2, "batch_size": 2, "num_workers": 0, "checkpoint_every": 1, "lr": 1e-3},
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(train_params: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    params = write_params(root / "params.yaml", train_params)
    result = runner.invoke(app, ["train", "--params", str(params), "--out", str(root / "run"), "--no-progress",
                                   "--cache-dir", str(root / "cache")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "run"


def write_params(path: Path, params: dict, **edits: object) -> Path:
    """``params`` with dotted-key ``edits`` as a YAML file."""
    params = yaml.safe_load(yaml.safe_dump(params))
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate_image(path: Path) -> None:
    """Re-encode as PNG and cut the pixel data short: the header still opens, decoding fails."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:-60])


@dataclass
class Ctx:
    """What a case may use: its own folder, the tiny train params, a finished run, a monkeypatch."""

    tmp: Path
    params: dict
    finished_run: Path
    monkeypatch: pytest.MonkeyPatch

    def run_copy(self) -> Path:
        return Path(shutil.copytree(self.finished_run, self.tmp / "run"))

    def train(self, *extra: str, **edits: object) -> list[str]:
        params = write_params(self.tmp / "params.yaml", self.params, **edits)
        return ["train", "--params", str(params), "--out", str(self.tmp / "run"), "--no-progress",
                "--cache-dir", str(self.tmp / "cache"), *extra]  # fmt: skip

    def checkpoint(self) -> Path:
        return save_tiny_checkpoint(self.tmp / "model.safetensors")

    def dataset(self) -> Path:
        return write_dataset(self.tmp, "d", "val", ["s0", "s1"], seed=0)


#: A case: its setup returns the CLI arguments and optionally a check of what must be left untouched.
Setup = Callable[[Ctx], tuple[list[str], Callable[[], None] | None]]
CASES: dict[str, tuple[Setup, tuple[str, ...]]] = {}


def case(name: str, *fragments: str) -> Callable[[Setup], Setup]:
    def register(setup: Setup) -> Setup:
        CASES[name] = (setup, fragments)
        return setup

    return register


@case("params: YAML syntax error", "params.yaml, line", "invalid YAML")
def _(ctx: Ctx):
    args = ctx.train()
    (ctx.tmp / "params.yaml").write_text("data:\n  train: [a.parquet]\ntrain:\n  lr: [1e-3\n")
    return args, lambda: not (ctx.tmp / "run").exists() or pytest.fail("a run folder was made")


@case("params: a section of the wrong type", "params.train must be a mapping", "got list")
def _(ctx: Ctx):
    return ctx.train(train=[1, 2]), None


@case("params: a learning rate that is not a number", "params.train.lr is 'fast'", "must be a number")
def _(ctx: Ctx):
    return ctx.train(train__lr="fast"), None


@case("train: device cuda without a GPU", "train.device is 'cuda'", "no CUDA device")
def _(ctx: Ctx):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return ctx.train(train__device="cuda"), lambda: not (ctx.tmp / "run").exists() or pytest.fail("run made")


@case("train: into a folder holding another run, without --resume", "already holds a training run", "--resume")
def _(ctx: Ctx):
    run = ctx.run_copy()
    before = files_of(run)
    return ctx.train(), lambda: files_of(run) == before or pytest.fail("the finished run was changed")


@case("train: --resume with another learning rate", "cannot resume", "train.lr: 0.001 -> 0.01")
def _(ctx: Ctx):
    run = ctx.run_copy()
    before = files_of(run)
    return ctx.train("--resume", train__lr=1e-2), lambda: files_of(run) == before or pytest.fail("run changed")


@case("train: --resume from a truncated trainer_state.pt", "step_0000002/trainer_state.pt is truncated or corrupt")
def _(ctx: Ctx):
    state = ctx.run_copy() / "checkpoints" / "step_0000002" / STATE_FILE
    state.write_bytes(state.read_bytes()[:1000])
    return ctx.train("--resume"), None


@case("train: a truncated image, read in a DataLoader worker", "cannot read a sample of dataset 'd'", "s1.png")
def _(ctx: Ctx):
    manifest = ctx.dataset()
    truncate_image(ctx.tmp / "d" / "val" / "s1.png")
    return ctx.train(data__train=[str(manifest)], train__num_workers=1, train__batch_size=2), None


@case("eval: a truncated image", "cannot read a sample of dataset 'd'", "s1.png", "truncated")
def _(ctx: Ctx):
    manifest = ctx.dataset()
    truncate_image(ctx.tmp / "d" / "val" / "s1.png")
    return ["eval", "--model", str(ctx.checkpoint()), "--data", str(manifest), "--crop", "56"], None


@case("data check: a truncated image", "data check: 1 of 2 samples", "s1.png")
def _(ctx: Ctx):
    manifest = ctx.dataset()
    truncate_image(ctx.tmp / "d" / "val" / "s1.png")
    return ["data", "check", str(manifest), "--cache-dir", str(ctx.tmp / "cache")], None


@case("eval: a checkpoint with flipped bytes", "model.safetensors is corrupt", "no longer match the digest")
def _(ctx: Ctx):
    checkpoint = ctx.checkpoint()
    flip_bytes(checkpoint, largest_tensor(checkpoint))
    return ["eval", "--model", str(checkpoint), "--data", str(ctx.dataset()), "--crop", "56"], None


@case("merge: a checkpoint with flipped bytes", "model.safetensors is corrupt")
def _(ctx: Ctx):
    checkpoint = ctx.checkpoint()
    flip_bytes(checkpoint, largest_tensor(checkpoint))
    merged = ctx.tmp / "merged.safetensors"
    return ["merge", "--checkpoint", str(checkpoint), "--out", str(merged)], lambda: not merged.exists() or pytest.fail("written")


@case("eval: an unmerged checkpoint away from its relative backbone path", "backbone.safetensors (relative",
      "--backbone-weights")  # fmt: skip
def _(ctx: Ctx):
    trained_in = ctx.tmp / "training"
    trained_in.mkdir()
    ctx.monkeypatch.chdir(trained_in)
    vit = timm.create_model("vit_small_patch14_dinov2", img_size=56, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, trained_in / "backbone.safetensors")
    config = ModelConfig(
        backbone=BackboneConfig(weights="backbone.safetensors", img_size=56, model_kwargs=dict(TINY_VIT)),
        head=tiny_config().head,
        adapter=tiny_config().adapter,
    )
    built = build_segmentor(config)
    checkpoint = save_segmentor(
        trained_in / "model.safetensors", built.model, config, backbone_sha256=built.backbone_sha256,
        init_factors=built.init_factors,
    )  # fmt: skip
    ctx.monkeypatch.chdir(ctx.tmp)
    return ["eval", "--model", str(checkpoint), "--data", str(ctx.dataset()), "--crop", "56"], None


@case("data download: a zip with a member outside the target folder", "01_images.zip: member '../evil.png'",
      "nothing was unpacked")  # fmt: skip
def _(ctx: Ctx):
    zips = {}
    for part in GTA5_PARTS:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("00001.png", b"fine")
            if part == "01_images.zip":
                archive.writestr("../evil.png", b"escapes")
        zips[f"/gta5/{part}"] = (200, "application/zip", buffer.getvalue())
    url = SERVERS.enter(serve_replies(zips))
    out = ctx.tmp / "gta5"
    args = ["data", "download", "gta5", "--out", str(out), "--base-url", f"{url}/gta5/"]
    return args, lambda: not (out / "raw").exists() and not (ctx.tmp / "evil.png").exists() or pytest.fail("wrote")


@case("predict: a 13000 x 13000 PNG of 165 KB, refused from its header before decoding",
      "huge.png is too large to read: 13000 x 13000 = 169000000 pixels", "--max-pixels")  # fmt: skip
def _(ctx: Ctx):
    huge = write_huge_png(ctx.tmp / "huge.png")
    out = ctx.tmp / "pred"
    args = ["predict", str(huge), "--model", str(ctx.checkpoint()), "--out", str(out), "--crop", "56"]
    return args, lambda: not out.exists() or pytest.fail("predict wrote output")


@case("predict: a 30000 x 30000 PNG, over Pillow's own limit", "bomb.png is too large to read: over Pillow's own")
def _(ctx: Ctx):
    bomb = ctx.tmp / "bomb.png"
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    out = ctx.tmp / "pred"
    args = ["predict", str(bomb), "--model", str(ctx.checkpoint()), "--out", str(out), "--crop", "56"]
    return args, lambda: not out.exists() or pytest.fail("predict wrote output")


@case("eval: an image above --max-pixels", "cannot read a sample of dataset 'd'",
      "s0.png is too large to read: 84 x 56 = 4704 pixels, above the limit of 4000")  # fmt: skip
def _(ctx: Ctx):
    manifest = ctx.dataset()
    return ["eval", "--model", str(ctx.checkpoint()), "--data", str(manifest), "--crop", "56",
            "--max-pixels", "4000"], None  # fmt: skip


@case("eval: a colour (RGB) label", "s1_label.png has PIL mode 'RGB', not one class value per pixel")
def _(ctx: Ctx):
    manifest = ctx.dataset()
    label = ctx.tmp / "d" / "val" / "s1_label.png"
    with Image.open(label) as opened:
        opened.convert("RGB").save(label)
    return ["eval", "--model", str(ctx.checkpoint()), "--data", str(manifest), "--crop", "56"], None


@case("data check: a floating-point image", "data check: 1 of 2 samples", "s1.png has PIL mode 'F'")
def _(ctx: Ctx):
    manifest = ctx.dataset()
    image = ctx.tmp / "d" / "val" / "s1.png"
    with Image.open(image) as opened:
        pixels = np.asarray(opened.convert("L"), dtype=np.float32) / 255
    Image.fromarray(pixels).save(image, format="TIFF")
    return ["data", "check", str(manifest), "--cache-dir", str(ctx.tmp / "cache")], None


def corrupt_manifest(ctx: Ctx) -> Path:
    """The tiny dataset's manifest with 16 bytes inverted in the middle of its column data, footer intact."""
    manifest = ctx.dataset()
    data = bytearray(manifest.read_bytes())
    middle = manifest_body_end(bytes(data)) // 2
    data[middle : middle + 16] = bytes(255 - byte for byte in data[middle : middle + 16])
    manifest.write_bytes(data)
    return manifest


@case("eval: a manifest corrupted in the middle", "d_val.parquet is corrupt", "dvc checkout", "dvc repro data")
def _(ctx: Ctx):
    return ["eval", "--model", str(ctx.checkpoint()), "--data", str(corrupt_manifest(ctx)), "--crop", "56"], None


@case("data check: a manifest corrupted in the middle", "d_val.parquet is corrupt", "dvc checkout")
def _(ctx: Ctx):
    manifest = corrupt_manifest(ctx)
    return ["data", "check", str(manifest), "--cache-dir", str(ctx.tmp / "cache")], None


@case("data download: a 1 MB zip holding a 1 GiB member", "01_images.zip: member '00001.png' unpacks to 1073741824",
      "zip bomb", "nothing was unpacked")  # fmt: skip
def _(ctx: Ctx):
    zips = {f"/gta5/{part}": (200, "application/zip", zip_of_zeros("00001.png", 1 << 20)) for part in GTA5_PARTS}
    zips["/gta5/01_images.zip"] = (200, "application/zip", zip_bomb())
    url = SERVERS.enter(serve_replies(zips))
    out = ctx.tmp / "gta5"
    args = ["data", "download", "gta5", "--out", str(out), "--base-url", f"{url}/gta5/"]
    return args, lambda: not (out / "raw").exists() or pytest.fail(f"unpacked {files_of(out / 'raw')}")


@case("stage: MLFLOW_TRACKING_URI answered by a web page", "is not an MLflow tracking server", "HTTP 404")
def _(ctx: Ctx):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, ctx.tmp / name)
    (ctx.tmp / ".dvc").mkdir()
    url = SERVERS.enter(serve_replies({"/": (200, "text/html", b"<html>a wiki</html>")}))
    ctx.monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    out = ctx.tmp / "data" / "prepared"
    args = [PIPELINE, "data", "--out", str(out), "--checksums", str(ctx.tmp / "gta5.sha256"), "--params",
            str(ctx.tmp / "params.yaml")]  # fmt: skip
    return args, lambda: not out.parent.exists() or pytest.fail("the stage wrote its output")


@case("stage: train.device cuda without a GPU", "train.device is 'cuda'")
def _(ctx: Ctx):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    params = ctx.tmp / "params.yaml"
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, ctx.tmp / name)
    (ctx.tmp / ".dvc").mkdir()
    edited = yaml.safe_load(params.read_text())
    edited["train"]["device"] = "cuda"
    params.write_text(yaml.safe_dump(edited))
    ctx.monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ctx.tmp}/mlflow.db")
    out = ctx.tmp / "models" / "train"
    args = [PIPELINE, "train", "--out", str(out), "--metrics", str(ctx.tmp / "train.json"), "--weights",
            str(ctx.tmp / "backbone"), "--init-cache", str(ctx.tmp / "init"), "--params", str(params)]  # fmt: skip
    return args, lambda: not out.parent.exists() or pytest.fail(f"left {list(out.parent.iterdir())}")


class _Servers:
    """Servers a case started, stopped after the case."""

    def __init__(self) -> None:
        self.stack: list = []

    def enter(self, manager) -> str:
        self.stack.append(manager)
        return manager.__enter__()

    def close(self) -> None:
        while self.stack:
            self.stack.pop().__exit__(None, None, None)


SERVERS = _Servers()


@pytest.fixture
def servers() -> Iterator[_Servers]:
    yield SERVERS
    SERVERS.close()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_writes_nothing(
    name: str, train_params: dict, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    for variable in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "RECYCLELORA_PARENT_RUN_ID", "RECYCLELORA_MLFLOW_DB"):
        monkeypatch.delenv(variable, raising=False)
    setup, fragments = CASES[name]
    args, untouched = setup(Ctx(tmp_path, train_params, finished_run, monkeypatch))
    command, args = (pipeline_app, args[1:]) if args[0] == PIPELINE else (app, args)
    result = runner.invoke(command, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"an exception escaped: {result.exception!r}"
    lines = [line for line in result.stderr.strip().splitlines() if not MLFLOW_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if untouched is not None:
        untouched()


def test_debug_shows_the_traceback(train_params: dict, tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml", train_params, train__lr="fast")
    args = ["train", "--params", str(params), "--out", str(tmp_path / "run")]
    for extra, env in (["--debug"], {DEBUG_ENV: "0"}), ([], {DEBUG_ENV: "1"}):
        result = runner.invoke(app, [*extra, *args], env=env)
        assert isinstance(result.exception, ParamsError), result.output
        assert "params.train.lr is 'fast'" in str(result.exception)


def _bug(error: Exception) -> Callable[..., None]:
    def raise_it(*args: object, **kwargs: object) -> None:
        raise error

    return raise_it


@pytest.mark.parametrize(
    "error",
    [ValueError("operands could not be broadcast together with shapes (3,) (4,)"), KeyError("class_pixels")],
    ids=["numpy-ValueError", "KeyError"],
)
@pytest.mark.parametrize("command", ["recyclelora-cli train", "python -m pipeline preset"])
def test_an_internal_error_keeps_its_traceback_and_asks_for_a_report(
    command: str, error: Exception, train_params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``ValueError`` raised inside numpy, or any error of our own code, is a bug, not the user's mistake: the
    traceback ends in the raising frame, then one line asks to report it. A user error raised at the same
    place is still one line."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    if command.startswith("python -m pipeline"):
        cli, target = pipeline_app, "pipeline.presets.apply_preset"
        args = ["preset", "paper_g2cbm", "--params", str(tmp_path / "params.yaml")]
    else:
        cli, target = app, "recyclelora.train.loop.train"
        args = ["train", "--params", str(write_params(tmp_path / "params.yaml", train_params)), "--out",
                str(tmp_path / "run")]  # fmt: skip
    monkeypatch.setattr(target, _bug(error))
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", result.stderr
    assert f"{type(error).__name__}: {error}" in lines and "raise error" in result.stderr, result.stderr
    assert " ".join(result.stderr.split()).endswith(" ".join(BUG_REPORT.split())), result.stderr  # rich may wrap

    monkeypatch.setattr(target, _bug(InvalidInputError("train.lr is too large: lower it")))
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and result.stderr == "error: train.lr is too large: lower it\n", result.stderr
