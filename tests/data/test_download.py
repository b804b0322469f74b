from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import appdirs
import numpy as np
import pytest
import requests
from cityscapesscripts.download import downloader
from PIL import Image
from typer.testing import CliRunner

from recyclelora.cli.main import app
from recyclelora.data.download import (
    GTA5_PARTS,
    DownloadError,
    UnpackLimits,
    _copy_declared,
    cityscapes_login,
    download_file,
    extract_zip,
    fetch_archives,
    read_checksums,
    remote_checksum,
)
from recyclelora.data.manifest import manifest_path, read_manifest
from tests.data.conftest import RawFixture
from tests.local_server import serving


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
    with serving(FileServer()) as srv:
        yield srv


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


def member(name: str, mode: int = 0) -> zipfile.ZipInfo:
    """A zip member made on Unix with the file type and permissions ``mode`` (0: none, as DOS tools write)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


#: Unsafe members of a zip: name ({tmp}: the test's folder), Unix mode, the problem the error names.
UNSAFE_MEMBERS = {
    "absolute": ("{tmp}/evil.txt", 0, "outside the target folder"),
    "drive": ("C:/evil.txt", 0, "outside the target folder"),
    "drive-backslash": ("C:\\evil.txt", 0, "outside the target folder"),
    "root-backslash": ("\\evil.txt", 0, "outside the target folder"),
    "dotdot-backslash": ("..\\evil.txt", 0, "outside the target folder"),
    "dotdot": ("images/../../evil.txt", 0, "outside the target folder"),
    "symlink": ("images/link.png", stat.S_IFLNK | 0o777, "symbolic link"),
    "char-device": ("images/dev.png", stat.S_IFCHR | 0o644, "character device"),
    "block-device": ("images/disk.png", stat.S_IFBLK | 0o644, "block device"),
    "fifo": ("images/pipe.png", stat.S_IFIFO | 0o644, "fifo"),
    "socket": ("images/sock.png", stat.S_IFSOCK | 0o644, "socket"),
}


@pytest.mark.parametrize(("name", "mode", "problem"), UNSAFE_MEMBERS.values(), ids=UNSAFE_MEMBERS)
def test_extract_zip_refuses_an_unsafe_member_before_unpacking_any(
    name: str, mode: int, problem: str, tmp_path: Path
) -> None:
    name = name.format(tmp=tmp_path.as_posix())
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(member("images/00001.png", stat.S_IFREG | 0o644), b"png")
        zipped.writestr(member(name, mode), b"../../target")
        zipped.writestr(member("images/00002.png", stat.S_IFREG | 0o644), b"png")
    with pytest.raises(DownloadError) as caught:
        extract_zip(archive, tmp_path / "raw", into="images")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{archive}: member {name!r} ") and problem in message
    assert "nothing was unpacked" in message and "delete it" in message
    assert [path.name for path in tmp_path.iterdir()] == ["parts.zip"]  # no folder, no file, inside or out


def test_extract_zip_unpacks_regular_files_and_folders(tmp_path: Path) -> None:
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(member("images/", stat.S_IFDIR | 0o755), b"")
        zipped.writestr(member("images/00001.png", stat.S_IFREG | 0o644), b"one")
        zipped.writestr(member("00002.png"), b"two")
    written = extract_zip(archive, tmp_path / "raw", into="images")
    assert {path.relative_to(tmp_path / "raw").as_posix(): path.read_bytes() for path in written} == {
        "images/00001.png": b"one",
        "images/00002.png": b"two",
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_first_download_records_the_sha256_and_later_downloads_are_checked_against_it(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = PAYLOAD[:100]
    server.files |= {"b.zip": PAYLOAD, "a.zip": first}
    record, folder = tmp_path / "checksums" / "gta5.sha256", tmp_path / "archives"

    fetch_archives(server.url, ["b.zip", "a.zip"], folder, record)
    assert record.read_text() == f"{sha256(first)}  a.zip\n{sha256(PAYLOAD)}  b.zip\n"  # sha256sum, sorted
    assert read_checksums(record) == {"a.zip": sha256(first), "b.zip": sha256(PAYLOAD)}
    said = " ".join(capsys.readouterr().out.split())
    assert (
        f"no published checksum for a.zip: recorded SHA-256 {sha256(first)} in {record} (checked on later "
        "downloads)" in said
    )

    listed_in = re.escape(str(record))
    refused = rf"a.zip: SHA-256 \w+ does not match {sha256(first)} listed in {listed_in}: .*delete its line"
    (folder / "a.zip").write_bytes(b"changed on disk")
    with pytest.raises(DownloadError, match=refused):
        fetch_archives(server.url, ["a.zip"], folder, record)
    assert not (folder / "a.zip").exists()

    server.files["a.zip"] = b"changed on the server"
    with pytest.raises(DownloadError, match=refused):
        fetch_archives(server.url, ["a.zip"], folder, record)
    assert not (folder / "a.zip").exists() and not (folder / "a.zip.part").exists()
    assert read_checksums(record)["a.zip"] == sha256(first)
    assert "recorded" not in capsys.readouterr().out


def test_the_record_is_rewritten_atomically_and_keeps_its_other_entries(
    server: FileServer, tmp_path: Path
) -> None:
    record = tmp_path / "gta5.sha256"
    record.write_text(f"{sha256(b'c').upper()} *c.zip\n")
    inode = record.stat().st_ino
    server.files["a.zip"] = PAYLOAD
    fetch_archives(server.url, ["a.zip"], tmp_path / "archives", record)
    assert record.stat().st_ino != inode  # a renamed temporary file replaced it; it was not written in place
    assert record.read_text() == f"{sha256(PAYLOAD)}  a.zip\n{sha256(b'c')}  c.zip\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["archives", "gta5.sha256"]  # no temporary


def test_a_published_checksum_is_checked_and_nothing_is_recorded(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record, folder = tmp_path / "gta5.sha256", tmp_path / "archives"
    server.files |= {"a.zip": PAYLOAD, "a.zip.sha256": f"{sha256(PAYLOAD)}  a.zip\n".encode()}
    fetch_archives(server.url, ["a.zip"], folder, record)
    assert (folder / "a.zip").read_bytes() == PAYLOAD and not record.exists()

    server.files |= {"b.zip": PAYLOAD + b"tampered", "b.zip.sha256": sha256(PAYLOAD).encode()}
    with pytest.raises(DownloadError, match="b.zip: SHA-256 .* does not match the expected .* corrupt"):
        fetch_archives(server.url, ["b.zip"], folder, record)
    assert not (folder / "b.zip").exists() and not record.exists()
    assert "recorded" not in capsys.readouterr().out


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
    listed = read_checksums(checksums)  # the given entry kept, every part without a published one recorded
    assert set(listed) == set(GTA5_PARTS) - {"01_images.zip"}
    assert all(listed[name] == hashlib.sha256(server.files[name]).hexdigest() for name in listed)
    assert "no published checksum for 02_labels.zip: recorded SHA-256" in " ".join(done.output.split())
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


CITYSCAPES = "https://www.cityscapes-dataset.com"


class LoginServer(ThreadingHTTPServer):
    """Cityscapes' login page: records each posted form, answers 302 (accepted) or 200 (refused)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), LoginHandler)
        self.posted: list[dict[str, str]] = []
        self.accept = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class LoginHandler(BaseHTTPRequestHandler):
    server: LoginServer

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/login" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.posted.append(dict(parse_qsl(form)))
        self.send_response(302 if self.server.accept else 200)
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def local_session(base: str) -> type[requests.Session]:
    """A real ``requests.Session`` whose requests to Cityscapes' site go to ``base`` instead."""

    class LocalSession(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
            return super().request(method, url.replace(CITYSCAPES, base, 1), *args, **kwargs)

    return LocalSession


def test_cityscapes_login_uses_the_given_credentials_and_stores_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    stored = Path(appdirs.user_data_dir("cityscapesscripts", "cityscapes")) / "credentials.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps({"username": "old", "password": "old"}))  # must not be used

    with serving(LoginServer()) as login:
        monkeypatch.setattr(downloader.requests, "Session", local_session(login.url))
        assert isinstance(cityscapes_login("alice", "s3cret"), requests.Session)
        assert login.posted == [{"username": "alice", "password": "s3cret", "submit": "Login"}]
        assert json.loads(stored.read_text()) == {"username": "old", "password": "old"}
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == [stored]

        login.accept = False
        with pytest.raises(DownloadError, match="login failed .*Bad credentials.*CITYSCAPES_USERNAME"):
            cityscapes_login("alice", "wrong")
        assert stored.is_file()


def files_below(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """Raw deflate data of ``size`` zero bytes (whole MiB) and their CRC-32, made in well under a second: one
    MiB compressed with a full flush (self-contained, byte-aligned blocks) repeated, then an empty final block."""
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return block * (size >> 20) + b"\x03\x00", crc


def zip_of_zeros(name: str, size: int, declared: int | None = None, before: bytes = b"") -> bytes:
    """A zip (written by hand: zipfile cannot store ready-compressed data) whose member ``name`` inflates to
    ``size`` zero bytes while its headers declare ``declared`` (default: the truth); with ``before``, a stored
    member ``first.png`` holding those bytes comes first."""
    data, crc = deflated_zeros(size)
    members = [(b"first.png", 0, before, zlib.crc32(before), len(before))] if before else []
    members.append((name.encode(), 8, data, crc, size if declared is None else declared))
    local, central = b"", b""
    for filename, method, payload, checksum, length in members:
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, checksum, len(payload), length)
        central += struct.pack("<IH", 0x02014B50, 20) + fields
        central += struct.pack("<HHHHHII", len(filename), 0, 0, 0, 0, 0, len(local)) + filename
        local += (
            struct.pack("<I", 0x04034B50) + fields + struct.pack("<HH", len(filename), 0) + filename + payload
        )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    return local + central + end


@functools.cache
def zip_bomb() -> bytes:
    """A 1 MB zip whose one member, 00001.png, inflates to 1 GiB of zeros."""
    return zip_of_zeros("00001.png", 1 << 30)


def test_the_zip_bomb_is_what_it_claims(tmp_path: Path) -> None:
    """Its member really inflates to 1 GiB (read through, not written): the refusal below is of a real bomb."""
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_of_zeros("zeros", 8 << 20))
    with zipfile.ZipFile(archive) as zipped, zipped.open("zeros") as member:
        assert sum(len(chunk) for chunk in iter(lambda: member.read(1 << 20), b"")) == 8 << 20
    assert len(zip_bomb()) < 1_100_000
    with zipfile.ZipFile(io.BytesIO(zip_bomb())) as zipped:
        assert zipped.getinfo("00001.png").file_size == 1 << 30


def test_extract_zip_refuses_a_zip_bomb_before_unpacking(tmp_path: Path) -> None:
    archive = tmp_path / "01_images.zip"
    archive.write_bytes(zip_bomb())
    with pytest.raises(DownloadError) as caught:
        extract_zip(archive, tmp_path / "raw", into="images")
    message = str(caught.value)
    assert message.startswith(f"{archive}: member '00001.png' unpacks to 1073741824 bytes from ")
    assert "(1011 x, above 100 x); nothing was unpacked" in message and "zip bomb" in message
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        (UnpackLimits(member_bytes=3000), "member 'b.png' unpacks to 4000 bytes, above 3000"),
        (UnpackLimits(total_bytes=5000), "its members unpack to 6000 bytes, above 5000"),
        (
            UnpackLimits(total_ratio=2, ratio=1000, ratio_floor=100),
            "its members unpack to 6000 bytes, 3 x its size (above 2 x)",
        ),
        (
            UnpackLimits(ratio=50, ratio_floor=100),
            "member 'b.png' unpacks to 4000 bytes from",  # about 20 compressed bytes, ratio about 200
        ),
    ],
)
def test_extract_zip_holds_members_and_the_whole_archive_to_its_limits(
    limits: UnpackLimits, problem: str, tmp_path: Path
) -> None:
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("a.png", np.random.default_rng(0).bytes(2000))  # does not compress
        zipped.writestr("b.png", bytes(4000))
    assert len(extract_zip(archive, tmp_path / "fine")) == 2  # within the default limits
    with pytest.raises(DownloadError) as caught:
        extract_zip(archive, tmp_path / "raw", limits=limits)
    assert str(caught.value).startswith(f"{archive}: {problem}") and "; nothing was unpacked" in str(caught.value)
    assert not (tmp_path / "raw").exists()


def test_a_member_larger_than_its_header_says_is_refused_and_the_unpacked_files_removed(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "parts.zip"
    archive.write_bytes(zip_of_zeros("images/liar.png", 8 << 20, declared=1000, before=b"a good frame"))
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "kept.png").write_bytes(b"unpacked before")
    with pytest.raises(
        DownloadError, match=rf"{archive} is not a valid zip \(Bad CRC-32 .*; the 1 file\(s\)"
    ):
        extract_zip(archive, tmp_path / "raw", into="images")
    assert files_below(tmp_path / "raw") == {"images/kept.png": b"unpacked before"}


def test_unpacking_stops_at_the_declared_size_whatever_the_reader_gives() -> None:
    sink = io.BytesIO()
    with pytest.raises(
        DownloadError, match="x.zip: member 'a' unpacks to more than the 1000 bytes its header"
    ):
        _copy_declared(io.BytesIO(bytes(5000)), sink, 1000, "x.zip: member 'a'")
    assert len(sink.getvalue()) <= 1000
