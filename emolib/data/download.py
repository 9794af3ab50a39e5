"""Resumable, checksummed HTTP(S) downloads, file manifests and safe archive extraction.

Only the standard library is used for the transfer (``urllib``), so a download works in any environment the
package installs in.

* :func:`download` streams into ``<dest>.part``, resumes an existing ``.part`` with an HTTP ``Range``
  request (and restarts cleanly when the server ignores it), verifies size and SHA-256, and only then
  renames the ``.part`` onto ``dest``. ``dest`` therefore exists only when it is complete and verified.
  On a checksum mismatch the ``.part`` is deleted (a wrong byte anywhere means none of it can be trusted
  for resuming) and :class:`ChecksumMismatchError` names the URL and both hashes. An interrupted transfer
  keeps its ``.part`` so that the next call resumes it.
* :class:`Manifest` lists files (name, url, sha256, size) from a JSON / YAML file or a dict;
  :func:`fetch_manifest` downloads all of them below a root folder.
* :func:`extract` unpacks zip and tar(.gz/.bz2/.xz) archives after checking **every** member first:
  absolute paths, ``..`` escapes, links that point outside the target (or members reached through a link),
  device files and FIFOs are refused with an error naming the archive and the member, before anything is
  written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from emolib.io import sha256_file

__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "Manifest",
    "ManifestEntry",
    "UnsafeArchiveError",
    "download",
    "extract",
    "fetch_manifest",
    "sha256_bytes",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIABLE_RE = re.compile(r"^bytes\s+\*/(\d+)$")


class DownloadError(RuntimeError):
    """The transfer failed (HTTP error, connection error, short body, wrong size)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{url}: SHA-256 mismatch: expected {expected}, got {actual} "
            "(the partial download was deleted; nothing was written to the destination)"
        )


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target or is not a plain file/dir/link."""

    def __init__(self, archive: str | os.PathLike, member: str, problem: str) -> None:
        self.archive = str(archive)
        self.member = member
        self.problem = problem
        super().__init__(f"{archive}: member {member!r}: {problem}; refusing to extract")


# --------------------------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    resume: bool = True,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is kept when it matches ``sha256`` (or when no hash is given); one that does not
    match raises ``ValueError`` instead of being overwritten. ``timeout`` is the socket timeout in seconds
    for connecting and for each read.
    """
    dest = Path(dest)
    _check_url(url)
    expected = _normalise_sha256(sha256, url)
    if dest.exists():
        return _existing_destination(dest, url, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and not resume:
        part.unlink()

    _transfer(url, part, progress=progress, timeout=timeout, headers=dict(headers or {}), label=dest.name)
    _verify(part, url, expected=expected, size=size)
    os.replace(part, dest)
    return dest


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// URLs can be downloaded (got scheme {scheme!r})")


def _normalise_sha256(sha256: str | None, where: str) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise ValueError(f"{where}: expected SHA-256 must be 64 hex digits, got {sha256!r}")
    return value


def _existing_destination(dest: Path, url: str, expected: str | None) -> Path:
    if expected is None:
        log.info("%s exists; not downloading %s again (no checksum given)", dest, url)
        return dest
    actual = sha256_file(dest)
    if actual != expected:
        raise ValueError(
            f"{dest}: exists but its SHA-256 is {actual}, expected {expected} for {url}; "
            "delete or move it to download again"
        )
    return dest


def _transfer(
    url: str, part: Path, *, progress: bool, timeout: float, headers: dict[str, str], label: str
) -> None:
    """Fill ``part`` with the body of ``url``, resuming from its current length when possible."""
    offset = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _unsatisfiable_total(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                return  # the .part already holds the whole file (e.g. a crash just before the rename)
            log.warning("%s: server refused to resume at byte %d; starting over", url, offset)
            part.unlink()
            return _transfer(url, part, progress=progress, timeout=timeout, headers=headers, label=label)
        exc.close()
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect: {reason}") from exc

    with response:
        mode, start, total = _resume_plan(response, url, offset)
        if mode == "wb" and offset:
            log.warning("%s: server ignored the Range request; restarting from byte 0", url)
        _stream_body(response, part, mode=mode, start=start, total=total, url=url,
                     progress=progress, timeout=timeout, label=label)


def _unsatisfiable_total(content_range: str | None) -> int | None:
    match = _UNSATISFIABLE_RE.match((content_range or "").strip())
    return int(match.group(1)) if match else None


def _resume_plan(response: Any, url: str, offset: int) -> tuple[str, int, int | None]:
    """Return (file mode, byte offset the body starts at, total file size if known)."""
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if response.status == 206:
        match = _CONTENT_RANGE_RE.match((response.headers.get("Content-Range") or "").strip())
        if not match:
            raise DownloadError(f"{url}: 206 response without a usable Content-Range header")
        first = int(match.group(1))
        if first != offset:
            raise DownloadError(f"{url}: asked to resume at byte {offset}, server sent from byte {first}")
        total = None if match.group(3) == "*" else int(match.group(3))
        return "ab", offset, total
    return "wb", 0, length


def _stream_body(
    response: Any, part: Path, *, mode: str, start: int, total: int | None, url: str,
    progress: bool, timeout: float, label: str,
) -> None:
    written = start
    with open(part, mode) as fh, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, disable=not progress, leave=False,
    ) as bar:
        try:
            for block in iter(lambda: response.read(_CHUNK), b""):
                fh.write(block)
                written += len(block)
                bar.update(len(block))
        except TimeoutError as exc:
            raise DownloadError(
                f"{url}: read timed out after {timeout} s at byte {written}; run again to resume"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"{url}: connection lost at byte {written} ({type(exc).__name__}: {exc}); run again to resume"
            ) from exc
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and written < total:
        raise DownloadError(f"{url}: connection closed at byte {written} of {total}; run again to resume")


def _verify(part: Path, url: str, *, expected: str | None, size: int | None) -> None:
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise DownloadError(f"{url}: expected {size} bytes, got {actual_size} (partial download deleted)")
    if expected is None:
        log.warning("%s: no SHA-256 given; the download is not verified", url)
        return
    actual = sha256_file(part)
    if actual != expected:
        part.unlink()
        raise ChecksumMismatchError(url, expected, actual)


# --------------------------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One downloadable file; ``name`` is its path below the download root (POSIX separators)."""

    name: str
    url: str
    sha256: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """An ordered list of :class:`ManifestEntry` with unique names.

    Accepted layouts: ``{"files": [entry, ...]}`` or a bare list of entries, each entry a mapping with
    ``name`` and ``url`` (required) and ``sha256`` / ``size`` (optional).
    """

    entries: tuple[ManifestEntry, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | list, *, source: str = "<manifest>") -> Manifest:
        if isinstance(data, Mapping):
            if "files" not in data:
                raise ValueError(f"{source}: manifest needs a 'files' list")
            items = data["files"]
        else:
            items = data
        if not isinstance(items, list):
            raise ValueError(f"{source}: 'files' must be a list, got {type(items).__name__}")
        entries = tuple(_parse_entry(item, f"{source}: files[{i}]") for i, item in enumerate(items))
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry.name in seen:
                raise ValueError(f"{source}: files[{i}]: duplicate name {entry.name!r}")
            seen.add(entry.name)
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read a manifest from ``.json`` or ``.yaml`` / ``.yml``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"{path}: manifest must be .json, .yaml or .yml")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot parse manifest: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> ManifestEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)


def _parse_entry(item: Any, where: str) -> ManifestEntry:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: entry must be a mapping, got {type(item).__name__}")
    unknown = set(item) - {"name", "url", "sha256", "size"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("name", "url"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    name = item["name"]
    problem = _relative_path_problem(name)
    if problem:
        raise ValueError(f"{where}: name {name!r}: {problem}")
    _check_url_for(item["url"], where)
    sha = item.get("sha256")
    if sha is not None:
        if not isinstance(sha, str):
            raise ValueError(f"{where}: 'sha256' must be a string")
        sha = _normalise_sha256(sha, where)
    size = item.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValueError(f"{where}: 'size' must be a non-negative integer, got {size!r}")
    return ManifestEntry(name=name, url=item["url"], sha256=sha, size=size)


def _check_url_for(url: str, where: str) -> None:
    try:
        _check_url(url)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def fetch_manifest(
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike,
    root: str | os.PathLike,
    *,
    names: Iterable[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Path]:
    """Download every entry (or only ``names``) of ``manifest`` to ``root/<name>``; return name -> path."""
    if isinstance(manifest, (str, os.PathLike)):
        manifest = Manifest.load(manifest)
    elif not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict(manifest)
    wanted = None if names is None else set(names)
    if wanted is not None:
        missing = wanted - {e.name for e in manifest}
        if missing:
            raise KeyError(f"not in the manifest: {sorted(missing)}")
    root = Path(root)
    out: dict[str, Path] = {}
    for entry in manifest:
        if wanted is not None and entry.name not in wanted:
            continue
        out[entry.name] = download(
            entry.url, root / entry.name, sha256=entry.sha256, size=entry.size,
            resume=resume, progress=progress, timeout=timeout,
        )
    return out


# --------------------------------------------------------------------------------------------- extraction


def extract(archive: str | os.PathLike, target: str | os.PathLike, *, progress: bool = False) -> Path:
    """Safely unpack a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target`` and return ``target``.

    All members are checked before anything is written (see the module docstring). Re-running overwrites
    files from a previous, interrupted extraction.
    """
    archive = Path(archive)
    target = Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: file not found")
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, target, progress)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, target, progress)
    else:
        raise ValueError(f"{archive}: not a zip or tar archive")
    return target


def _split_parts(name: str) -> list[str]:
    # Backslashes are path separators in archives made on Windows; treating them as such here errs on
    # the side of refusing "..\\x".
    return [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]


def _relative_path_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    depth = 0
    for part in _split_parts(name):
        depth = depth - 1 if part == ".." else depth + 1
        if depth < 0:
            return "path escapes the target folder ('..')"
    if not _split_parts(name):
        return "empty path"
    return None


def _link_problem(member: str, link: str, *, relative_to_member: bool) -> str | None:
    """Problem with a link whose text is ``link``: symlinks resolve from the member's folder, tar hard links
    from the archive root."""
    if link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        return f"link to absolute path {link!r}"
    base = _split_parts(member)[:-1] if relative_to_member else []
    problem = _relative_path_problem(posixpath.join(*base, link) if base else link)
    if problem and problem != "empty path":
        return f"link to {link!r} points outside the target folder"
    return None


def _through_link_problem(name: str, links: set[str]) -> str | None:
    parts = _split_parts(name)
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            return f"path goes through the link {'/'.join(parts[:i])!r}"
    return None


def _check_tar(archive: Path, members: list[tarfile.TarInfo]) -> None:
    links: set[str] = set()
    for m in members:
        problem = _relative_path_problem(m.name)
        if problem is None:
            problem = _through_link_problem(m.name, links)
        if problem is None:
            if m.issym():
                problem = _link_problem(m.name, m.linkname, relative_to_member=True)
                links.add("/".join(_split_parts(m.name)))
            elif m.islnk():
                problem = _link_problem(m.name, m.linkname, relative_to_member=False)
            elif m.ischr() or m.isblk():
                problem = "device file"
            elif m.isfifo():
                problem = "FIFO"
            elif not (m.isreg() or m.isdir()):
                problem = f"unsupported member type {m.type!r}"
        if problem:
            raise UnsafeArchiveError(archive, m.name, problem)


def _extract_tar(archive: Path, target: Path, progress: bool) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check_tar(archive, members)
            target.mkdir(parents=True, exist_ok=True)
            for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress, leave=False):
                # The 'data' filter re-checks on the real file system (it resolves links already written),
                # a second line of defence behind _check_tar.
                tar.extract(m, target, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(archive, exc.tarinfo.name, str(exc)) from exc
    except (tarfile.ReadError, EOFError) as exc:
        raise ValueError(f"{archive}: damaged tar archive ({exc})") from exc


def _zip_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):
        return zf.read(info).decode("utf-8")
    return None


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> dict[str, str]:
    """Validate members; return symlink member name -> link text."""
    links: dict[str, str] = {}
    for info in zf.infolist():
        problem = _relative_path_problem(info.filename)
        if problem is None:
            problem = _through_link_problem(info.filename, set(links))
        if problem is None:
            mode = info.external_attr >> 16
            link = _zip_symlink_target(zf, info)
            if link is not None:
                problem = _link_problem(info.filename, link, relative_to_member=True)
                links["/".join(_split_parts(info.filename))] = link
            elif info.create_system == 3 and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                problem = "device file"
            elif info.create_system == 3 and stat.S_ISFIFO(mode):
                problem = "FIFO"
        if problem:
            raise UnsafeArchiveError(archive, info.filename, problem)
    return links


def _extract_zip(archive: Path, target: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            links = _check_zip(archive, zf)
            target.mkdir(parents=True, exist_ok=True)
            for info in tqdm(zf.infolist(), desc=f"extract {archive.name}", disable=not progress, leave=False):
                key = "/".join(_split_parts(info.filename))
                out = target.joinpath(*_split_parts(info.filename))
                if key in links:
                    # zipfile would write the link text as a regular file; recreate the (checked) link.
                    out.parent.mkdir(parents=True, exist_ok=True)
                    if out.is_symlink() or out.exists():
                        out.unlink()
                    os.symlink(links[key], out)
                elif info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive}: damaged zip archive ({exc})") from exc


def sha256_bytes(data: bytes) -> str:
    """SHA-256 hex digest of ``data`` (handy for writing manifests)."""
    return hashlib.sha256(data).hexdigest()
