"""Session-wide test setup.

Synthetic data, built once per session under ``tmp_path_factory`` and shared by every test file:

- ``synthetic_release(dataset, size="tiny", seed=TINY_SEED)``: a raw release written by
  ``emolib.data.release.synthesize_release`` (the generator's files, plus ``folds.json`` for CMU-MOSEI).
- ``synthetic_cache(dataset, size="tiny", seed=TINY_SEED, *, params=None, folds=None, ...)``: that release
  prepared by the dataset's adapter (``TINY_PREPARE`` unless ``params`` is given; ``folds`` replaces the
  release's MOSEI folds without touching the release).
- ``tiny_releases`` / ``tiny_caches``: the tiny releases and caches of every synthetic dataset, by name.
- ``smoke_caches``: the smoke-size caches of every dataset with the parameters params/smoke.yaml gives
  notebook 01 (only the slow integration tests use them).

Every build happens on first use (``tiny_caches["sims"]`` prepares only CH-SIMS), so one test file still runs
quickly on its own. The releases and caches are shared: a test that changes files copies them first.

The registry coverage check (tests/registry_coverage.py) is wired up here too: every entry of
``emolib.registry.REGISTRY`` must be looked up by some test of the full default selection.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import registry_coverage
from helpers import TINY_PREPARE, TINY_SEED

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- synthetic data


class LazyMap(Mapping):
    """A read-only mapping whose values are built by ``build(key)`` on first access (then kept)."""

    def __init__(self, keys, build: Callable[[str], Any]) -> None:
        self._keys, self._build, self._values = tuple(keys), build, {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._values:
            self._values[key] = self._build(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _datasets() -> tuple[str, ...]:
    from emolib.data import synthetic

    return tuple(synthetic.DATASETS)


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``synthetic_release(dataset, size="tiny", seed=TINY_SEED)`` -> the release root (built once)."""
    base = tmp_path_factory.mktemp("releases")
    built: dict[tuple[str, str, int], Path] = {}

    def make(dataset: str, size: str = "tiny", seed: int = TINY_SEED) -> Path:
        from emolib.data.release import synthesize_release

        key = (dataset, size, int(seed))
        if key not in built:
            built[key] = synthesize_release(dataset, base / f"{size}-seed{seed}" / dataset, seed=seed, size=size)
        return built[key]

    return make


@pytest.fixture(scope="session")
def synthetic_cache(synthetic_release, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``synthetic_cache(dataset, size="tiny", seed=TINY_SEED, *, params=None, folds=None,
    allow_skipped=False, min_face_rate=None)`` -> the cache folder (named after the dataset), built once per
    distinct arguments. ``params``: PrepareParams (default ``TINY_PREPARE``). ``folds``: ``{split: [ids]}``
    passed to the adapter as a fold file. The build must be complete, skip nothing unless ``allow_skipped``,
    and find faces on at least ``min_face_rate`` of the frames when given."""
    base = tmp_path_factory.mktemp("caches")
    built: dict[str, tuple[Path, Any]] = {}

    def make(dataset: str, size: str = "tiny", seed: int = TINY_SEED, *, params=None,
             folds: Mapping[str, list[str]] | None = None, allow_skipped: bool = False,
             min_face_rate: float | None = None) -> Path:
        from emolib.data import get_adapter
        from emolib.data.prepare import PrepareParams

        params = params if params is not None else PrepareParams(**TINY_PREPARE)
        key = json.dumps([dataset, size, int(seed), dataclasses.asdict(params), folds], sort_keys=True, default=str)
        if key not in built:
            root = synthetic_release(dataset, size, seed)
            folder = base / f"{size}-seed{seed}-{len(built)}"
            options = {}
            if folds is not None:
                folder.mkdir(parents=True)
                options["folds"] = folder / "folds.json"
                options["folds"].write_text(json.dumps(folds, indent=1), encoding="utf-8")
            report = get_adapter(dataset).prepare(root, folder / dataset, params=params, progress=False, **options)
            built[key] = (folder / dataset, report)
        out, report = built[key]
        assert report.complete, report.summary()
        assert allow_skipped or not report.skipped, report.summary()
        if min_face_rate is not None:
            assert report.face_stats["face_rate"] >= min_face_rate, report.summary()
        return out

    return make


@pytest.fixture(scope="session")
def tiny_releases(synthetic_release) -> Mapping[str, Path]:
    """dataset -> tiny release (seed TINY_SEED) of every synthetic dataset."""
    return LazyMap(_datasets(), synthetic_release)


@pytest.fixture(scope="session")
def tiny_caches(synthetic_cache) -> Mapping[str, Path]:
    """dataset -> cache of the tiny release, prepared with TINY_PREPARE (48 px faces every 500 ms)."""
    return LazyMap(_datasets(), synthetic_cache)


@pytest.fixture(scope="session")
def smoke_caches(synthetic_cache) -> Mapping[str, Path]:
    """dataset -> cache of the smoke release, with exactly the parameters params/smoke.yaml gives notebook 01."""
    from emolib.data.prepare import PrepareParams
    from emolib.pipeline.profile import load_profile

    runs = {r.key: r.parameters for r in load_profile("smoke", ROOT).runs}

    def build(dataset: str) -> Path:
        p = runs[f"data:{dataset}"]
        params = PrepareParams(face_size=p["face_size"], img_interval=p["img_interval"],
                               min_face_size=p.get("min_face_size", PrepareParams.min_face_size))
        return synthetic_cache(dataset, p["synth_size"], p["synth_seed"], params=params, allow_skipped=True,
                               min_face_rate=0.95)

    return LazyMap(_datasets(), build)


# ----------------------------------------------------------------------------------- registry coverage

_session_state = {"uninstall": None, "deselected_default": 0, "collection_errors": 0, "workers": []}


def _is_xdist_worker(config: pytest.Config) -> bool:
    return getattr(config, "workerinput", None) is not None


def pytest_configure(config: pytest.Config) -> None:
    from emolib import registry

    if _is_xdist_worker(config):
        # `make test` runs pytest-xdist with one worker per core: one thread per worker (and per process a test
        # starts: kernels, accelerate launches), since two workers at two threads each slowed steps up to 7x.
        import os

        import torch

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        torch.set_num_threads(1)
    _session_state.update(deselected_default=0, collection_errors=0, workers=[])
    if _session_state["uninstall"] is None:
        registry_coverage.USED.clear()
        _session_state["uninstall"] = registry_coverage.install(registry)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_state["uninstall"] is not None:
        _session_state["uninstall"]()
        _session_state["uninstall"] = None


def pytest_deselected(items: list[pytest.Item]) -> None:
    marker = registry_coverage.DEFAULT_EXCLUDED_MARKER
    _session_state["deselected_default"] += sum(1 for it in items if it.get_closest_marker(marker) is None)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _session_state["collection_errors"] += 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: keep what each worker looked up (see pytest_sessionfinish)."""
    output = getattr(node, "workeroutput", {}).get("registry_coverage")
    if output is not None:
        _session_state["workers"].append(output)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the full default selection: fail the session for every registry entry that no test looked up.

    Under pytest-xdist each worker sends its lookups and selection counts to the controller, which checks the
    union once every worker is down."""
    config = session.config
    state = {"used": sorted(registry_coverage.USED), "deselected_default": _session_state["deselected_default"],
             "collection_errors": _session_state["collection_errors"], "tests_collected": session.testscollected}
    if _is_xdist_worker(config):
        config.workeroutput["registry_coverage"] = state
        return
    workers = _session_state["workers"]
    if workers:  # every worker collects the whole selection, so their counts agree
        state = {"used": sorted({tuple(u) for w in workers for u in w["used"]}),
                 "deselected_default": max(w["deselected_default"] for w in workers),
                 "collection_errors": max(w["collection_errors"] for w in workers),
                 "tests_collected": max(w["tests_collected"] for w in workers)}
    reason = registry_coverage.partial_run_reason(
        config, deselected_default=state["deselected_default"], collection_errors=state["collection_errors"],
        stopped_early=bool(session.shouldfail or session.shouldstop), tests_collected=state["tests_collected"],
        workers_reported=bool(workers))
    if reason is None and exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        reason = f"exit status {int(exitstatus)}"
    lines, failed = [], False
    if reason is not None:
        if config.option.verbose > 0:
            lines.append(f"registry coverage: not checked ({reason})")
    else:
        from emolib import registry

        entries = registry.REGISTRY.entries()
        lines = registry_coverage.unexercised({tuple(u) for u in state["used"]}, entries)
        failed = bool(lines)
        if not failed and config.option.verbose > 0:
            lines.append(f"registry coverage: all {len(entries)} registry entries were looked up by a test")
    if lines:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in lines:
            if reporter is not None:
                reporter.write_line(line, red=failed, bold=failed)
            else:
                print(line)
    if failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
