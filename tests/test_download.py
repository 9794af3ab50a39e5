"""Downloads against a loopback HTTP server (with and without Range support) and safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import random
import re
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from emolib.data.download import (
    ChecksumMismatchError,
    DownloadError,
    Manifest,
    UnsafeArchiveError,
    download,
    extract,
    fetch_manifest,
    sha256_bytes,
)

# ------------------------------------------------------------------------------------------- fixtures


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# Random bytes keep the gzip archive large enough (~80 kB) for partial transfers to be meaningful.
PAYLOAD = random.Random(0).randbytes(80_000)
ARCHIVE = _tar_gz({"data/a.txt": b"alpha\n" * 5000, "data/sub/b.bin": PAYLOAD})
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()


class LoopbackServer:
    """Serves ``files`` on 127.0.0.1; records each request's path and Range header."""

    def __init__(self, files: dict[str, bytes], *, honour_range: bool = True, cut_first_at: int | None = None):
        self.files = files
        self.honour_range = honour_range
        self.cut_first_at = cut_first_at  # first GET sends only this many bytes, then drops the connection
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", rng or "")
                if match and server.honour_range:
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
                payload = body[start:]
                if server.cut_first_at is not None and len(server.requests) == 1:
                    payload = payload[: server.cut_first_at]
                    self.close_connection = True
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[LoopbackServer] = []

    def start(files=None, **kwargs) -> LoopbackServer:
        server = LoopbackServer(files if files is not None else {"/data.tar.gz": ARCHIVE}, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# ------------------------------------------------------------------------------------------- download


def test_full_download_with_checksum_then_extract(serve, tmp_path):
    assert len(ARCHIVE) > 80_000
    server = serve()
    dest = download(server.url("/data.tar.gz"), tmp_path / "dl" / "data.tar.gz", sha256=ARCHIVE_SHA,
                    progress=False)
    assert dest.read_bytes() == ARCHIVE
    assert not (tmp_path / "dl" / "data.tar.gz.part").exists()
    assert server.requests == [("/data.tar.gz", None)]
    out = extract(dest, tmp_path / "out")
    assert (out / "data" / "a.txt").read_bytes() == b"alpha\n" * 5000
    assert (out / "data" / "sub" / "b.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_names_url_and_hashes_and_leaves_nothing(serve, tmp_path):
    server = serve()
    wrong = "0" * 64
    url = server.url("/data.tar.gz")
    dest = tmp_path / "data.tar.gz"
    with pytest.raises(ChecksumMismatchError) as info:
        download(url, dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and ARCHIVE_SHA in message
    assert (info.value.expected, info.value.actual) == (wrong, ARCHIVE_SHA)
    assert not dest.exists() and not dest.with_name("data.tar.gz.part").exists()


def test_resumes_partial_download_with_range(serve, tmp_path):
    server = serve()
    dest = tmp_path / "data.tar.gz"
    half = len(ARCHIVE) // 2
    dest.with_name("data.tar.gz.part").write_bytes(ARCHIVE[:half])
    download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, progress=False)
    assert server.requests == [("/data.tar.gz", f"bytes={half}-")]
    assert dest.read_bytes() == ARCHIVE


def test_server_ignoring_range_restarts_cleanly(serve, tmp_path):
    server = serve(honour_range=False)
    dest = tmp_path / "data.tar.gz"
    dest.with_name("data.tar.gz.part").write_bytes(b"stale bytes that must not survive")
    download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, progress=False)
    assert server.requests[0][1] == "bytes=33-"
    assert dest.read_bytes() == ARCHIVE


def test_resume_disabled_discards_part(serve, tmp_path):
    server = serve()
    dest = tmp_path / "data.tar.gz"
    dest.with_name("data.tar.gz.part").write_bytes(ARCHIVE[:100])
    download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, resume=False, progress=False)
    assert server.requests == [("/data.tar.gz", None)]
    assert dest.read_bytes() == ARCHIVE


def test_dropped_connection_keeps_part_and_next_call_resumes(serve, tmp_path):
    server = serve(cut_first_at=1000)
    dest = tmp_path / "data.tar.gz"
    url = server.url("/data.tar.gz")
    with pytest.raises(DownloadError, match=r"at byte 1000 .*run again to resume"):
        download(url, dest, sha256=ARCHIVE_SHA, progress=False)
    assert not dest.exists()
    assert dest.with_name("data.tar.gz.part").read_bytes() == ARCHIVE[:1000]
    download(url, dest, sha256=ARCHIVE_SHA, progress=False)
    assert server.requests[-1] == ("/data.tar.gz", "bytes=1000-")
    assert dest.read_bytes() == ARCHIVE


def test_complete_part_answered_416_is_finished(serve, tmp_path):
    server = serve()
    dest = tmp_path / "data.tar.gz"
    dest.with_name("data.tar.gz.part").write_bytes(ARCHIVE)
    download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, progress=False)
    assert server.requests == [("/data.tar.gz", f"bytes={len(ARCHIVE)}-")]
    assert dest.read_bytes() == ARCHIVE


def test_http_error_and_bad_scheme(serve, tmp_path):
    server = serve()
    with pytest.raises(DownloadError, match=r"/missing\.zip: HTTP 404"):
        download(server.url("/missing.zip"), tmp_path / "m.zip", progress=False)
    with pytest.raises(ValueError, match="only http:// and https://"):
        download("ftp://example.org/x", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="64 hex digits"):
        download(server.url("/data.tar.gz"), tmp_path / "x", sha256="abc", progress=False)


def test_size_mismatch_is_an_error(serve, tmp_path):
    server = serve()
    with pytest.raises(DownloadError, match=rf"expected 5 bytes, got {len(ARCHIVE)}"):
        download(server.url("/data.tar.gz"), tmp_path / "d", size=5, progress=False)
    assert not (tmp_path / "d").exists()


def test_existing_destination_is_checked_not_refetched(serve, tmp_path):
    server = serve()
    dest = tmp_path / "data.tar.gz"
    dest.write_bytes(ARCHIVE)
    assert download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, progress=False) == dest
    dest.write_bytes(b"someone else's file")
    with pytest.raises(ValueError, match=r"exists but its SHA-256 is .* delete or move it"):
        download(server.url("/data.tar.gz"), dest, sha256=ARCHIVE_SHA, progress=False)
    assert server.requests == []
    assert dest.read_bytes() == b"someone else's file"


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_from_json_and_yaml_and_fetch(serve, tmp_path):
    other = b"second file\n"
    server = serve({"/data.tar.gz": ARCHIVE, "/labels.csv": other})
    entries = [
        {"name": "raw/data.tar.gz", "url": server.url("/data.tar.gz"), "sha256": ARCHIVE_SHA.upper(),
         "size": len(ARCHIVE)},
        {"name": "labels.csv", "url": server.url("/labels.csv"), "sha256": sha256_bytes(other)},
    ]
    (tmp_path / "m.json").write_text(json.dumps({"files": entries}))
    (tmp_path / "m.yaml").write_text(
        "files:\n" + "".join(f"  - name: {e['name']}\n    url: {e['url']}\n" for e in entries)
    )
    manifest = Manifest.load(tmp_path / "m.json")
    assert [e.name for e in manifest] == ["raw/data.tar.gz", "labels.csv"]
    assert manifest["raw/data.tar.gz"].sha256 == ARCHIVE_SHA and manifest["raw/data.tar.gz"].size == len(ARCHIVE)
    yaml_manifest = Manifest.load(tmp_path / "m.yaml")
    assert [e.url for e in yaml_manifest] == [e["url"] for e in entries]
    assert yaml_manifest["labels.csv"].sha256 is None

    paths = fetch_manifest(tmp_path / "m.json", tmp_path / "root", progress=False)
    assert paths == {"raw/data.tar.gz": tmp_path / "root/raw/data.tar.gz", "labels.csv": tmp_path / "root/labels.csv"}
    assert paths["labels.csv"].read_bytes() == other
    only = fetch_manifest({"files": entries}, tmp_path / "root2", names=["labels.csv"], progress=False)
    assert list(only) == ["labels.csv"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "../x", "url": "http://h/x"}, r"files\[0\]: name '../x': path escapes"),
        ({"name": "/etc/x", "url": "http://h/x"}, r"files\[0\]: name '/etc/x': absolute path"),
        ({"name": "x", "url": "http://h/x", "sha256": "12"}, r"files\[0\]: .*64 hex digits"),
        ({"name": "x", "url": "http://h/x", "size": -1}, r"files\[0\]: 'size' must be a non-negative"),
        ({"name": "x", "url": "file:///x"}, r"files\[0\]: .*only http"),
        ({"name": "x", "url": "http://h/x", "md5": "1"}, r"files\[0\]: unknown keys \['md5'\]"),
        ({"url": "http://h/x"}, r"files\[0\]: 'name' must be a non-empty string"),
    ],
)
def test_manifest_validation_errors(entry, message):
    with pytest.raises(ValueError, match=r"^m\.json: " + message):
        Manifest.from_dict({"files": [entry]}, source="m.json")


def test_manifest_duplicate_and_parse_errors(tmp_path):
    dup = [{"name": "a", "url": "http://h/a"}, {"name": "a", "url": "http://h/b"}]
    with pytest.raises(ValueError, match=r"files\[1\]: duplicate name 'a'"):
        Manifest.from_dict(dup)
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: cannot parse manifest"):
        Manifest.load(bad)


# ------------------------------------------------------------------------------------------- extraction


def _zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, link in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:bz2" if path.suffix == ".bz2" else "w:xz" if path.suffix == ".xz" else "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_extract_good_zip_and_tar_with_inside_links(tmp_path):
    z = _zip(tmp_path / "ok.zip", [("d/x.txt", b"x"), ("d/e/", b"")], {"d/lnk": "x.txt"})
    out = extract(z, tmp_path / "z")
    assert (out / "d/x.txt").read_bytes() == b"x" and (out / "d/e").is_dir()
    assert os.readlink(out / "d/lnk") == "x.txt" and (out / "d/lnk").read_bytes() == b"x"

    for suffix in (".tar.bz2", ".tar.xz"):
        members = [("d/x.txt", b"y"), _link("d/s", "x.txt"), _link("d/h", "d/x.txt", tarfile.LNKTYPE)]
        t = _tar(tmp_path / f"ok{suffix}", members)
        out = extract(t, tmp_path / f"t{suffix}")
        assert (out / "d/s").read_bytes() == b"y" and (out / "d/h").read_bytes() == b"y"


@pytest.mark.parametrize(
    "members, bad, problem",
    [
        ([("ok.txt", b"1"), ("../evil.txt", b"2")], "../evil.txt", "escapes"),
        ([("a/../../evil.txt", b"2")], "a/../../evil.txt", "escapes"),
        ([("/tmp/evil.txt", b"2")], "/tmp/evil.txt", "absolute path"),
        ([("..\\evil.txt", b"2")], "..\\evil.txt", "escapes"),
    ],
)
def test_malicious_zip_paths_rejected(tmp_path, members, bad, problem):
    archive = _zip(tmp_path / "bad.zip", members)
    with pytest.raises(UnsafeArchiveError, match=problem) as info:
        extract(archive, tmp_path / "out" / "inner")
    assert str(archive) in str(info.value) and repr(bad) in str(info.value)
    assert info.value.member == bad
    assert not (tmp_path / "out").exists()  # nothing was written, not even the good member


def test_zip_symlink_escaping_rejected(tmp_path):
    archive = _zip(tmp_path / "bad.zip", [("a.txt", b"1")], {"sub/up": "../../outside"})
    with pytest.raises(UnsafeArchiveError, match=r"'sub/up': link to '../../outside' points outside"):
        extract(archive, tmp_path / "out")


@pytest.mark.parametrize(
    "members, bad, problem",
    [
        ([("ok.txt", b"1"), ("../evil.txt", b"2")], "../evil.txt", "escapes"),
        ([("/etc/evil.txt", b"2")], "/etc/evil.txt", "absolute path"),
        ([_link("sub/up", "../../outside")], "sub/up", "points outside"),
        ([_link("abs", "/etc/passwd")], "abs", "link to absolute path"),
        ([_link("hard", "../outside", tarfile.LNKTYPE)], "hard", "points outside"),
        ([_link("dot", "."), _link("dot/esc", "../x")], "dot/esc", "goes through the link 'dot'"),
        ([_link("dev", "", tarfile.CHRTYPE)], "dev", "device file"),
        ([_link("blk", "", tarfile.BLKTYPE)], "blk", "device file"),
        ([_link("fifo", "", tarfile.FIFOTYPE)], "fifo", "FIFO"),
    ],
)
def test_malicious_tar_rejected(tmp_path, members, bad, problem):
    archive = _tar(tmp_path / "bad.tar", members)
    with pytest.raises(UnsafeArchiveError, match=problem) as info:
        extract(archive, tmp_path / "out" / "inner")
    assert str(archive) in str(info.value) and info.value.member == bad
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"plain text")
    with pytest.raises(ValueError, match=r"x\.zip: not a zip or tar archive"):
        extract(path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.tar: file not found"):
        extract(tmp_path / "nope.tar", tmp_path / "out")
