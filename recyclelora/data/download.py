"""Download, verify and unpack the datasets that can be fetched, then prepare them.

GTAV is public: its 10 image and 10 label zips are fetched over HTTP(S) with resume (a ``.part`` file is
continued with a ``Range`` request) and checked against ``Content-Length`` and a SHA-256: the one listed in a
``sha256sum``-style checksum file, else a ``<zip>.sha256`` beside the zip on the server. A zip with neither has
its SHA-256 recorded in the checksum file on its first download (trust on first use) and is checked against it
from then on. Every member of a zip is checked before any is unpacked: no absolute path, no ``..``, no link or
special file.
Cityscapes is fetched with ``cityscapesscripts``' downloader using ``CITYSCAPES_USERNAME`` /
``CITYSCAPES_PASSWORD``. The other datasets need a registration: :func:`download_dataset` says where to get them.
Layout under ``out``: ``archives/<dataset>/`` (the zips), ``raw/<dataset>/`` (unpacked), then the prepared labels
and manifests (:func:`recyclelora.data.prepare.prepare_dataset`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException, HTTPResponse
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, BinaryIO
from unittest import mock
from urllib.error import HTTPError, URLError
from urllib.parse import urljoin
from urllib.request import Request, urlopen

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from recyclelora.data.prepare import PrepareResult, prepare_dataset
from recyclelora.data.raw import GTA5_URL, RAW_DATASETS
from recyclelora.errors import InvalidInputError, UserError, require_extra
from recyclelora.io import atomic_path, atomic_write_text, sha256_file
from recyclelora.validation import validate_fields

if TYPE_CHECKING:
    import requests

GTA5_PARTS: tuple[str, ...] = tuple(
    f"{i:02d}_{kind}.zip" for kind in ("images", "labels") for i in range(1, 11)
)
CITYSCAPES_PACKAGES: tuple[str, ...] = ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip")
#: The Cityscapes login and package download come from cityscapesscripts (the ``cityscapes`` extra).
NEEDS_CITYSCAPES = "Downloading Cityscapes"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
#: Zip member file types (mode bits of ``external_attr >> 16``) that are never unpacked.
_SPECIAL_TYPES = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFBLK: "block device",
    stat.S_IFCHR: "character device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


class DownloadError(UserError):
    """A download, checksum or unpacking step failed; the message says what to do."""


def download_progress() -> Progress:
    """A rich progress display in bytes."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())


def read_checksums(path: str | os.PathLike[str]) -> dict[str, str]:
    """File name -> SHA-256 from a ``sha256sum`` output file (``<hex>  <name>`` per line)."""
    checksums = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if match is None:
            raise InvalidInputError(f"{path}:{number}: expected '<sha256 hex>  <file name>' as written by sha256sum")
        checksums[PurePosixPath(match.group(2)).name] = match.group(1).lower()
    return checksums


def write_checksums(path: str | os.PathLike[str], checksums: Mapping[str, str]) -> None:
    """Write ``checksums`` (file name -> SHA-256) atomically as ``sha256sum`` would, sorted by name."""
    atomic_write_text(path, "".join(f"{checksums[name]}  {name}\n" for name in sorted(checksums)))


def remote_checksum(url: str) -> str | None:
    """The SHA-256 in ``<url>.sha256`` if the server has that file, else None."""
    try:
        with urlopen(url + ".sha256", timeout=_TIMEOUT_S) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (HTTPError, URLError):
        return None
    match = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    return match.group(1).lower() if match else None


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    listed_in: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``<dest>.part``; verify size and, if given, ``sha256``.

    ``dest`` appears only complete and verified (renamed from the ``.part`` file). A cut transfer leaves the
    ``.part`` file for the next call to continue; a checksum mismatch deletes it, and its error names
    ``listed_in``, the checksum file ``sha256`` came from, if any. Raises :class:`DownloadError`.
    """
    dest = Path(dest)
    if dest.is_file():
        _verify(dest, dest, sha256, listed_in)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = urlopen(
            Request(url, headers={"Range": f"bytes={offset}-"} if offset else {}), timeout=_TIMEOUT_S
        )
    except HTTPError as error:
        if error.code == 416 and offset:  # the .part file is not a prefix the server can continue: restart
            part.unlink()
            return download_file(url, dest, sha256=sha256, listed_in=listed_in, progress=progress)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}: check the URL (--base-url)") from error
    except URLError as error:
        raise DownloadError(f"cannot reach {url} ({error.reason}): check the URL and the network") from error
    with response:
        total = _expected_size(response, offset)
        if response.status != 206:
            offset = 0
        task = progress.add_task(dest.name, total=total, completed=offset) if progress else None
        with open(part, "ab" if offset else "wb") as handle:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(chunk)
                    if progress is not None and task is not None:
                        progress.advance(task, len(chunk))
            except (OSError, HTTPException) as error:
                raise DownloadError(
                    f"{dest.name}: the transfer broke off ({error}): run the command again to resume"
                ) from error
            finally:
                handle.flush()
                os.fsync(handle.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{dest.name}: received {size} of {total} bytes (the transfer was cut): run the command again to "
            f"resume from {part}"
        )
    _verify(part, dest, sha256, listed_in)
    os.replace(part, dest)
    return dest


def _expected_size(response: HTTPResponse, offset: int) -> int | None:
    """Full size of the file: from ``Content-Range`` of a 206 reply, else ``Content-Length``."""
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            raise DownloadError(
                f"{response.url}: the server answered the resume request at byte {offset} with Content-Range "
                f"{response.headers.get('Content-Range')!r}: delete the .part file and run again"
            )
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def _verify(path: Path, dest: Path, sha256: str | None, listed_in: Path | None) -> None:
    """Delete ``path`` and raise unless its SHA-256 is ``sha256`` (None: nothing to check)."""
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256.lower():
        path.unlink()
        if listed_in is None:
            raise DownloadError(
                f"{dest.name}: SHA-256 {actual} does not match the expected {sha256}: the file is corrupt and "
                "was deleted; run the command again to download it anew"
            )
        raise DownloadError(
            f"{dest.name}: SHA-256 {actual} does not match {sha256} listed in {listed_in}: the file is corrupt "
            "or changed on the server and was deleted; run the command again, or, if the server's file changed "
            f"on purpose, delete its line from {listed_in} to record the new one"
        )


@dataclass(frozen=True)
class UnpackLimits:
    """How far an archive may unpack, checked from its directory before anything is written and again while
    each member streams out (:func:`extract_zip`).

    The supported archives (GTAV's parts, Cityscapes' packages) hold PNG and JPEG images of a few MB each,
    which do not compress (ratio about 1), plus small text and JSON files; the largest, Cityscapes'
    leftImg8bit_trainvaltest.zip, is 11 GB. So a member may unpack to ``member_bytes`` and ``ratio`` times its
    compressed size, the whole archive to ``total_bytes`` and ``total_ratio`` times the archive's size; sizes up
    to ``ratio_floor`` are not held to the ratios (a small text file may compress well). A zip bomb (1 GB of
    zeros in 1 MB, ratio 1000) fails both ratios.
    """

    member_bytes: int = field(default=1 << 30, metadata={"ge": 1})
    total_bytes: int = field(default=64 << 30, metadata={"ge": 1})
    ratio: float = field(default=100.0, metadata={"ge": 1})
    total_ratio: float = field(default=20.0, metadata={"ge": 1})
    ratio_floor: int = field(default=1 << 20, metadata={"ge": 0})

    def __post_init__(self) -> None:
        validate_fields(self)


def extract_zip(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    into: str = "",
    limits: UnpackLimits = UnpackLimits(),
) -> list[Path]:
    """Unpack ``archive`` below ``dest``, under the folder ``into`` unless a member already starts with it.

    Every member is checked first (:func:`_member_parts`, :func:`_check_sizes`): one unsafe or oversized member
    and nothing is written. Members are written atomically, each refused if it unpacks to more bytes than its
    header declares; one whose file already exists with the member's size is kept. If a member fails while
    unpacking, the files this call wrote are deleted again.
    """
    dest = Path(dest)
    written: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [(info, _member_parts(archive, info)) for info in zipped.infolist()]
            _check_sizes(archive, [info for info, _ in members], limits)
            for info, parts in members:
                if info.is_dir():
                    continue
                if into and parts[0] != into:
                    parts = (into, *parts)
                target = dest.joinpath(*parts)
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                with zipped.open(info) as source, atomic_path(target) as tmp, open(tmp, "wb") as sink:
                    _copy_declared(source, sink, info.file_size, f"{archive}: member {info.filename!r}")
                written.append(target)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        DownloadError,
    ) as error:  # an interruption resumes instead
        _remove(written, dest)
        if isinstance(error, DownloadError):
            raise
        raise DownloadError(
            f"{archive} is not a valid zip ({error}): delete it and download again"
            + (f"; the {len(written)} file(s) unpacked from it were removed" if written else "")
        ) from error
    return written


def _check_sizes(
    archive: str | os.PathLike[str], members: list[zipfile.ZipInfo], limits: UnpackLimits
) -> None:
    """Raise :class:`DownloadError` if a member or the whole archive would unpack beyond ``limits``."""
    problem = None
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.member_bytes:
            problem = (
                f"member {info.filename!r} unpacks to {info.file_size} bytes, above {limits.member_bytes}"
            )
        elif info.file_size > limits.ratio_floor and ratio > limits.ratio:
            problem = (
                f"member {info.filename!r} unpacks to {info.file_size} bytes from {info.compress_size} "
                f"({ratio:.0f} x, above {limits.ratio:.0f} x)"
            )
        if problem:
            break
    else:
        total = sum(info.file_size for info in members)
        ratio = total / max(os.path.getsize(archive), 1)
        if total > limits.total_bytes:
            problem = f"its members unpack to {total} bytes, above {limits.total_bytes}"
        elif total > limits.ratio_floor and ratio > limits.total_ratio:
            problem = f"its members unpack to {total} bytes, {ratio:.0f} x its size (above {limits.total_ratio:.0f} x)"
    if problem:
        raise DownloadError(
            f"{archive}: {problem}; nothing was unpacked: the archive is damaged or a zip bomb, delete it and get "
            "it from a source you trust"
        )


def _copy_declared(source: BinaryIO, sink: BinaryIO, declared: int, what: str) -> None:
    """Copy ``source`` to ``sink``, refusing more than the ``declared`` bytes: a size header that lies (zipfile
    itself stops there and fails the CRC check; this bound does not depend on it)."""
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        if copied > declared:
            raise DownloadError(
                f"{what} unpacks to more than the {declared} bytes its header declares: the archive is damaged or "
                "a zip bomb, delete it and get it from a source you trust"
            )
        sink.write(chunk)


def _remove(files: list[Path], dest: Path) -> None:
    """Delete ``files`` and then the folders below ``dest`` (and ``dest``) that this leaves empty."""
    for path in files:
        path.unlink(missing_ok=True)
    folders = {
        parent for path in files for parent in path.parents if parent == dest or dest in parent.parents
    }
    for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _member_parts(archive: str | os.PathLike[str], info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path components of a zip member that is safe to unpack, else raise :class:`DownloadError`.

    Refused: an absolute path (``/``, ``\\``, a drive such as ``C:``), a ``..`` component, and a member whose
    Unix mode says symbolic link, device, fifo or socket. Backslashes count as separators, as on Windows.
    """
    path = PureWindowsPath(info.filename)
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if path.anchor or ".." in path.parts or not path.parts:
        problem = "points outside the target folder (an absolute path, a drive or a '..' component)"
    elif file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        problem = f"is a {_SPECIAL_TYPES.get(file_type, f'special file (mode {file_type:#o})')}, not a file"
    else:
        return path.parts
    raise DownloadError(
        f"{archive}: member {info.filename!r} {problem}; nothing was unpacked: the archive is unsafe, delete it "
        "and get it from a source you trust"
    )


def download_gta5(
    out: str | os.PathLike[str],
    *,
    base_url: str = GTA5_URL,
    checksums: str | os.PathLike[str] | None = None,
    parts: Sequence[str] = GTA5_PARTS,
    workers: int | None = None,
    strict: bool = False,
) -> PrepareResult:
    """Fetch, verify and unpack the GTAV zips into ``<out>/raw/gta5/{images,labels}``, then prepare them.

    ``checksums`` (default ``<out>/archives/gta5/SHA256SUMS``) is read and extended (:func:`fetch_archives`).
    """
    out = Path(out)
    archives, raw = out / "archives" / "gta5", out / "raw" / "gta5"
    record = Path(checksums) if checksums is not None else archives / "SHA256SUMS"
    for name, archive in zip(parts, fetch_archives(base_url, parts, archives, record), strict=True):
        extract_zip(archive, raw, into=name.removesuffix(".zip").split("_", 1)[1])
    return prepare_dataset("gta5", raw, out, workers=workers, strict=strict)


def fetch_archives(base_url: str, names: Sequence[str], folder: Path, checksums: Path) -> list[Path]:
    """Download ``names`` from ``base_url`` into ``folder``, each checked against its SHA-256.

    The expected SHA-256 is the one listed in ``checksums`` (a ``sha256sum`` file), else the server's
    ``<name>.sha256``. A file with neither is trusted on first use: its SHA-256 is recorded in ``checksums``
    (created if missing, rewritten atomically), which checks every later download of it.
    """
    known = read_checksums(checksums) if checksums.is_file() else {}
    base_url = base_url.rstrip("/") + "/"
    paths = []
    with download_progress() as progress:
        for name in names:
            url = urljoin(base_url, name)
            listed = known.get(name)
            expected, source = (listed, checksums) if listed else (remote_checksum(url), None)
            path = download_file(url, folder / name, sha256=expected, listed_in=source, progress=progress)
            if expected is None:
                known[name] = sha256_file(path)
                write_checksums(checksums, known)
                progress.console.print(
                    f"no published checksum for {name}: recorded SHA-256 {known[name]} in {checksums} (checked "
                    "on later downloads)",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            paths.append(path)
    return paths


def cityscapes_login(username: str, password: str) -> requests.Session:
    """A logged-in session from ``cityscapesscripts``' own ``login``, fed the given credentials.

    ``login`` reads a stored ``credentials.json`` or prompts and offers to store the answers in it; here it
    looks in an empty temporary folder, its prompts are answered from memory and storing is declined, so the
    credentials are never written to disk.
    """
    downloader = require_extra("cityscapesscripts.download.downloader", "cityscapes", NEEDS_CITYSCAPES)

    answers = iter([username, "n"])  # the username prompt, then "Store credentials unencrypted? [y/N]"
    with (
        tempfile.TemporaryDirectory() as empty,
        mock.patch.object(downloader.appdirs, "user_data_dir", return_value=empty),
        mock.patch.object(downloader, "input", lambda _prompt="": next(answers)),
        mock.patch.object(downloader.getpass, "getpass", return_value=password),
    ):
        try:
            return downloader.login()
        # the package raises a bare Exception ("Bad credentials.") besides requests' errors
        except Exception as error:
            raise DownloadError(
                f"Cityscapes login failed ({error}): check CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD"
            ) from error


def download_cityscapes(
    out: str | os.PathLike[str], *, workers: int | None = None, strict: bool = False
) -> PrepareResult:
    """Fetch the Cityscapes packages (credentials from the environment), unpack and prepare them."""
    downloader = require_extra("cityscapesscripts.download.downloader", "cityscapes", NEEDS_CITYSCAPES)

    username, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if not username or not password:
        raise DownloadError(
            "Cityscapes needs an account (https://www.cityscapes-dataset.com/register/): set CITYSCAPES_USERNAME "
            "and CITYSCAPES_PASSWORD in the environment, or download "
            f"{' and '.join(CITYSCAPES_PACKAGES)} yourself and run `recyclelora-cli data prepare cityscapes`"
        )
    session = cityscapes_login(username, password)
    out = Path(out)
    archives, raw = out / "archives" / "cityscapes", out / "raw" / "cityscapes"
    partial = archives / "partial"
    for package in CITYSCAPES_PACKAGES:
        final = archives / package
        if not final.is_file():
            partial.mkdir(parents=True, exist_ok=True)
            try:
                downloader.download_packages(
                    session=session,
                    package_names=[package],
                    destination_path=str(partial),
                    resume=(partial / package).is_file(),
                )
            # the package raises a bare Exception (MD5 mismatch, no access) besides requests' errors
            except Exception as error:
                raise DownloadError(
                    f"Cityscapes package {package} failed ({error}): run again to resume, or delete "
                    f"{partial / package} to start it over"
                ) from error
            os.replace(partial / package, final)
        extract_zip(final, raw)
    return prepare_dataset("cityscapes", raw, out, workers=workers, strict=strict)


def download_dataset(
    name: str,
    out: str | os.PathLike[str],
    *,
    base_url: str = GTA5_URL,
    checksums: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    strict: bool = False,
) -> PrepareResult:
    """Download and prepare ``name``; for a dataset behind a registration raise :class:`DownloadError`
    saying where to get it and which layout ``prepare`` expects. ``checksums``: see :func:`download_gta5`."""
    if name == "gta5":
        return download_gta5(out, base_url=base_url, checksums=checksums, workers=workers, strict=strict)
    if name == "cityscapes":
        return download_cityscapes(out, workers=workers, strict=strict)
    if name not in RAW_DATASETS:
        raise InvalidInputError(f"dataset {name!r} is unknown: choose one of {list(RAW_DATASETS)}")
    raise DownloadError(registration_message(name))


def registration_message(name: str) -> str:
    """Where to get a dataset that needs a registration, and the layout ``prepare`` expects."""
    spec = RAW_DATASETS[name]
    return (
        f"{name} cannot be downloaded automatically: get it from {spec.source}, unpack it and run "
        f"`recyclelora-cli data prepare {name} --raw RAW --out OUT`, with RAW laid out as\n{spec.layout()}"
    )
