from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import appdirs
import numpy as np
import pytest
from cityscapesscripts.download import downloader
from PIL import Image
from typer.testing import CliRunner

from recyclelora.cli.main import app
from recyclelora.data.download import (
    GTA5_PARTS,
    DownloadError,
    cityscapes_login,
    download_file,
    extract_zip,
    read_checksums,
    remote_checksum,
)
from recyclelora.data.manifest import manifest_path, read_manifest
from tests.data.conftest import RawFixture


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` with byte ranges; a name in ``cut`` is cut off halfway the first time it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.honour_range = True
        self.ranges: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data/"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        name = self.path.removeprefix("/data/")
        self.server.ranges.append((name, self.headers.get("Range")))
        if name not in self.server.files:
            self.send_error(404)
            return
        body = self.server.files[name]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.server.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.server.cut:
            self.server.cut.discard(name)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))


def test_cut_transfer_resumes_from_the_part_file(server: FileServer, tmp_path: Path) -> None:
    server.files["a.zip"] = PAYLOAD
    server.cut.add("a.zip")
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError, match="received 2500 of 5000 bytes.*run the command again"):
        download_file(server.url + "a.zip", dest)
    assert not dest.exists() and (tmp_path / "a.zip.part").read_bytes() == PAYLOAD[:2500]

    download_file(server.url + "a.zip", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "a.zip.part").exists()
    assert server.ranges == [("a.zip", None), ("a.zip", "bytes=2500-")]


def test_a_server_without_ranges_restarts_the_file(server: FileServer, tmp_path: Path) -> None:
    server.files["a.zip"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "a.zip.part").write_bytes(b"stale bytes")
    assert download_file(server.url + "a.zip", tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_an_unresumable_part_file_is_restarted(server: FileServer, tmp_path: Path) -> None:
    server.files["a.zip"] = PAYLOAD
    (tmp_path / "a.zip.part").write_bytes(bytes(6000))  # longer than the file: the server answers 416
    assert download_file(server.url + "a.zip", tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_corrupt_download_is_rejected_and_deleted(server: FileServer, tmp_path: Path) -> None:
    server.files["a.zip"] = PAYLOAD[:-1] + b"\x00"
    server.files["a.zip.sha256"] = f"{hashlib.sha256(PAYLOAD).hexdigest()}  a.zip\n".encode()
    checksums = tmp_path / "SHA256SUMS"
    checksums.write_text(f"{hashlib.sha256(PAYLOAD).hexdigest()}  a.zip\n")
    assert read_checksums(checksums) == {"a.zip": hashlib.sha256(PAYLOAD).hexdigest()}
    assert remote_checksum(server.url + "a.zip") == hashlib.sha256(PAYLOAD).hexdigest()
    assert remote_checksum(server.url + "b.zip") is None
    with pytest.raises(DownloadError, match="SHA-256 .* does not match .* corrupt and was deleted"):
        download_file(server.url + "a.zip", tmp_path / "a.zip", sha256=remote_checksum(server.url + "a.zip"))
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / "a.zip.part").exists()


def test_missing_file_is_a_clear_error(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404.*--base-url"):
        download_file(server.url + "nothing.zip", tmp_path / "nothing.zip")


def test_read_checksums_rejects_other_formats(tmp_path: Path) -> None:
    (tmp_path / "sums").write_text("a.zip deadbeef\n")
    with pytest.raises(ValueError, match="sums:1: expected '<sha256 hex>  <file name>'"):
        read_checksums(tmp_path / "sums")


def test_extract_zip_refuses_paths_outside_the_target(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zipped:
        zipped.writestr("../evil.txt", "x")
    with pytest.raises(DownloadError, match="outside the target folder"):
        extract_zip(tmp_path / "evil.zip", tmp_path / "raw")
    assert not (tmp_path / "evil.txt").exists()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def serve_gta5(server: FileServer, fx: RawFixture) -> None:
    """GTAV's 20 zips: frame i in part i; image zips hold images/NNNNN.png, label zips bare NNNNN.png."""
    frames = sorted(p.name for p in (fx.raw / "images").iterdir())
    for part in GTA5_PARTS:
        index, kind = int(part[:2]) - 1, part[3:-4]
        members = frames[index : index + 1]
        prefix = "images/" if kind == "images" else ""
        server.files[part] = zip_bytes({prefix + m: (fx.raw / kind / m).read_bytes() for m in members})
    server.cut.add("02_labels.zip")


def test_cli_download_gta5_resumes_verifies_unpacks_and_prepares(
    server: FileServer, gta5: RawFixture, tmp_path: Path
) -> None:
    serve_gta5(server, gta5)
    server.files["01_images.zip.sha256"] = hashlib.sha256(server.files["01_images.zip"]).hexdigest().encode()
    checksums = tmp_path / "SHA256SUMS"
    checksums.write_text(f"{hashlib.sha256(server.files['03_labels.zip']).hexdigest()} *03_labels.zip\n")
    out = tmp_path / "data"
    args = ["data", "download", "gta5", "--out", str(out), "--checksums", str(checksums), "--workers", "1"]
    runner = CliRunner()

    cut = runner.invoke(app, args, env={"RECYCLELORA_GTA5_URL": server.url})
    assert cut.exit_code == 1 and "02_labels.zip: received" in cut.output

    done = runner.invoke(app, args, env={"RECYCLELORA_GTA5_URL": server.url})
    assert done.exit_code == 0, done.output
    assert ("02_labels.zip", f"bytes={len(server.files['02_labels.zip']) // 2}-") in server.ranges
    for kind in ("images", "labels"):
        for frame in ("00001", "00002", "00003"):
            raw_file = out / "raw/gta5" / kind / f"{frame}.png"
            assert raw_file.read_bytes() == (gta5.raw / kind / f"{frame}.png").read_bytes()
    samples = read_manifest(manifest_path(out, "gta5", "train"))
    assert len(samples) == 3
    for sample in samples:
        expected = gta5.expected[("train", sample.label.stem)]
        np.testing.assert_array_equal(np.asarray(Image.open(sample.label)), expected)

    server.files["03_labels.zip"] += b"tampered"
    (out / "archives/gta5/03_labels.zip").unlink()
    bad = runner.invoke(app, [*args, "--base-url", server.url])
    assert bad.exit_code == 1 and "03_labels.zip: SHA-256" in bad.output


LAYOUT_LINES = {
    "synthia": "RGB/*.png",
    "urbansyn": "ss/*.png",
    "bdd100k": "images/10k/train/*.jpg",
    "mapillary": "validation/v1.2/labels/*.png",
    "acdc": "gt/*/val/*/*_gt_labelTrainIds.png",
}


@pytest.mark.parametrize("name", list(LAYOUT_LINES))
def test_cli_download_of_a_registered_dataset_says_where_to_get_it(name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "download", name, "--out", str(tmp_path)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "cannot be downloaded automatically" in text and f"data prepare {name}" in text
    assert LAYOUT_LINES[name] in text


def test_cli_download_cityscapes_without_credentials(tmp_path: Path) -> None:
    no_credentials = {"CITYSCAPES_USERNAME": None, "CITYSCAPES_PASSWORD": None}
    args = ["data", "download", "cityscapes", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env=no_credentials)
    assert result.exit_code == 1
    assert "CITYSCAPES_USERNAME" in result.output and "cityscapes-dataset.com/register" in result.output


class FakeSession:
    """Stands in for requests.Session: records the login form, answers 302 (accepted) or 200 (refused)."""

    posted: ClassVar[list[dict]] = []
    accept: ClassVar[bool] = True

    def get(self, url: str, **kwargs: object) -> FakeResponse:
        return FakeResponse(200)

    def post(self, url: str, data: dict, **kwargs: object) -> FakeResponse:
        FakeSession.posted.append(dict(data))
        return FakeResponse(302 if FakeSession.accept else 200)


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code

    def raise_for_status(self) -> None:
        pass


def test_cityscapes_login_uses_the_given_credentials_and_stores_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.setattr(downloader.requests, "Session", FakeSession)
    monkeypatch.setattr(FakeSession, "posted", [])
    stored = Path(appdirs.user_data_dir("cityscapesscripts", "cityscapes")) / "credentials.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps({"username": "old", "password": "old"}))  # must not be used

    assert isinstance(cityscapes_login("alice", "s3cret"), FakeSession)
    assert FakeSession.posted == [{"username": "alice", "password": "s3cret", "submit": "Login"}]
    assert json.loads(stored.read_text()) == {"username": "old", "password": "old"}
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [stored]

    monkeypatch.setattr(FakeSession, "accept", False)
    with pytest.raises(DownloadError, match="login failed .*Bad credentials.*CITYSCAPES_USERNAME"):
        cityscapes_login("alice", "wrong")
    assert stored.is_file()
