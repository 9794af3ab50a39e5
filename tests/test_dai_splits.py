"""Dai et al.'s split lists: pinned manifest, download layout, checksum refusal, offline message, CLI.

The real lists are never stored here: the downloads run against a loopback server holding synthetic lists.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import quote

import pytest
from test_download import LoopbackServer

from emolib.cli import main
from emolib.data import dai_splits
from emolib.data.dai_splits import (
    DAI_COMMIT,
    DAI_REPO,
    DAI_SPLIT_FILES,
    DEFAULT_DAI_SPLITS_DIR,
    DaiSplitFile,
    DaiSplitsChecksumError,
    DaiSplitsUnavailableError,
    fetch_dai_splits,
)
from emolib.data.download import sha256_bytes
from emolib.data.splits import read_split_dir

SPLITS = ("train", "valid", "test")
# Synthetic lists: (dataset, split) -> bytes, with ids in each dataset's style.
CONTENT = {
    ("iemocap", s): "".join(f"Ses0{i % 5 + 1}F_impro0{k}_F{i:03d}\n" for i in range(n)).encode()
    for k, (s, n) in enumerate(zip(SPLITS, (7, 2, 3)), 1)
} | {
    ("mosei", s): "".join(f"-vid{k}x_{i}\n" for i in range(n)).encode()
    for k, (s, n) in enumerate(zip(SPLITS, (6, 1, 2)), 1)
}


def _synthetic_files(**wrong_sha: str) -> tuple[DaiSplitFile, ...]:
    """A manifest of the synthetic lists; ``wrong_sha={"mosei_valid": sha}`` gives one file a wrong hash."""
    return tuple(
        DaiSplitFile(d, s, wrong_sha.get(f"{d}_{s}", sha256_bytes(body)), body.count(b"\n"))
        for (d, s), body in CONTENT.items()
    )


def _served() -> dict[str, bytes]:
    """URL path -> body, as the raw server lays them out (``/data%20split/IEMOCAP_split/train_split.txt``)."""
    return {"/" + quote(DaiSplitFile(d, s, "0" * 64, 0).source): body for (d, s), body in CONTENT.items()}


@pytest.fixture
def server():
    srv = LoopbackServer(_served())
    yield srv
    srv.close()


@pytest.fixture
def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{DAI_REPO}/{DAI_COMMIT}"


def test_fetch_lays_out_the_adapter_folders(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dai_splits, "DAI_SPLIT_FILES", _synthetic_files())
    out = tmp_path / "dai"
    folders = fetch_dai_splits(out, base_url=server.url("/"), progress=False)
    assert folders == {"iemocap": out / "IEMOCAP_SPLIT", "mosei": out / "MOSEI_SPLIT"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        f"{d}/{s}_split.txt" for d in ("IEMOCAP_SPLIT", "MOSEI_SPLIT") for s in SPLITS)
    for dataset, folder in folders.items():
        split = read_split_dir(folder)
        for s in SPLITS:
            ids = CONTENT[(dataset, s)].decode().split()
            assert {u for u, v in split.items() if v == s} == set(ids)
    assert all("/data%20split/" in path for path, _ in server.requests)
    # Files in place with the right hash are kept: a second run (or files copied by hand) needs no network.
    n = len(server.requests)
    assert fetch_dai_splits(out, datasets=("mosei",), base_url=server.url("/"), progress=False) == {
        "mosei": out / "MOSEI_SPLIT"}
    assert len(server.requests) == n


def test_wrong_checksum_is_refused_and_nothing_is_written(server, tmp_path, monkeypatch):
    wrong = "ab" * 32
    monkeypatch.setattr(dai_splits, "DAI_SPLIT_FILES", _synthetic_files(mosei_valid=wrong))
    out = tmp_path / "dai"
    with pytest.raises(DaiSplitsChecksumError) as info:
        fetch_dai_splits(out, base_url=server.url("/"), progress=False)
    message = str(info.value)
    target = out / "MOSEI_SPLIT" / "valid_split.txt"
    assert str(target) in message and wrong in message and sha256_bytes(CONTENT[("mosei", "valid")]) in message
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_unreachable_server_says_how_to_supply_the_files(closed_port_url, tmp_path, monkeypatch):
    monkeypatch.setattr(dai_splits, "DAI_SPLIT_FILES", _synthetic_files())
    out = tmp_path / "dai"
    with pytest.raises(DaiSplitsUnavailableError) as info:
        fetch_dai_splits(out, base_url=closed_port_url, progress=False, timeout=5)
    message = str(info.value)
    for needle in (f"https://github.com/{DAI_REPO}", DAI_COMMIT, "'data split/'", str(DEFAULT_DAI_SPLITS_DIR),
                   "split_dir", "folds"):
        assert needle in message
    for f in dai_splits.DAI_SPLIT_FILES:
        assert f"{f.source}  ->  {out / f.target}" in message
    assert not any(p.is_file() for p in out.rglob("*"))
    # Copied by hand, the files are verified without the network.
    for f in dai_splits.DAI_SPLIT_FILES:
        (out / f.target).parent.mkdir(parents=True, exist_ok=True)
        (out / f.target).write_bytes(CONTENT[(f.dataset, f.split)])
    assert fetch_dai_splits(out, base_url=closed_port_url, progress=False)["iemocap"] == out / "IEMOCAP_SPLIT"


def test_shipped_manifest_is_pinned_and_consistent():
    assert re.fullmatch(r"[0-9a-f]{40}", DAI_COMMIT)
    assert len(DAI_SPLIT_FILES) == 6
    assert {(f.dataset, f.split) for f in DAI_SPLIT_FILES} == {(d, s) for d in ("iemocap", "mosei") for s in SPLITS}
    assert {(f.dataset, f.split): f.lines for f in DAI_SPLIT_FILES} == {
        ("iemocap", "train"): 5162, ("iemocap", "valid"): 737, ("iemocap", "test"): 1481,
        ("mosei", "train"): 14524, ("mosei", "valid"): 1765, ("mosei", "test"): 4188}
    manifest = dai_splits.dai_manifest()
    assert len(manifest) == 6 and len({e.sha256 for e in manifest}) == 6
    for f, entry in zip(DAI_SPLIT_FILES, manifest):
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and entry.sha256 == f.sha256
        assert entry.url.startswith(f"https://raw.githubusercontent.com/{DAI_REPO}/{DAI_COMMIT}/data%20split/")
        assert entry.url.endswith(f"/{f.split}_split.txt") and " " not in entry.url
        assert entry.name == f"{'IEMOCAP' if f.dataset == 'iemocap' else 'MOSEI'}_SPLIT/{f.split}_split.txt"


def test_cli_download_splits(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dai_splits, "DAI_SPLIT_FILES", _synthetic_files())
    monkeypatch.setattr(dai_splits, "RAW_BASE_URL", server.url(""))
    out = tmp_path / "dai"
    assert main(["download", "--splits", "dai", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "IEMOCAP_SPLIT") in printed and str(out / "MOSEI_SPLIT") in printed
    assert len(read_split_dir(out / "MOSEI_SPLIT")) == 9


def test_cli_download_splits_failure_exits_1(closed_port_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dai_splits, "RAW_BASE_URL", closed_port_url)
    assert main(["download", "--splits", "dai", "--out", str(tmp_path / "dai")]) == 1
    assert "supply them by hand" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--splits", "dai", "--dataset", "iemocap"],
    ["--splits", "dai", "somewhere"],
    ["--dataset", "iemocap", "somewhere", "--out", "x"],
    ["--dataset", "iemocap"],
    [],
])
def test_cli_download_bad_combinations_exit_2(argv, capsys):
    assert main(["download", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: download:") and err.count("\n") == 1


def test_cli_download_unknown_split_source_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["download", "--splits", "other"])
    assert info.value.code == 2
