"""The main job timed (issue 18): ``emolib run <profile> --bench N`` (``make bench`` runs the smoke profile, what
``make reproduce`` runs) from a clean results folder, N times, with where each run's time went; the record goes to
``results/bench/<profile>.json``.

Each repeat copies the notebooks, the profile file and ``results/published`` into a fresh folder, as a clean clone
has them (the installed ``.venv`` is reused: setup is not part of the measurement), and runs the profile there
through the pipeline runner. The runner's breakdown of every run (``emolib.pipeline.runner.stage_seconds``:
kernel, synth, prepare, train, evaluate, tables, other) is kept per repeat and summed per stage. The record holds
the median and the spread (min, max) of the repeats' wall times and whether the median meets ``TARGET_S``.
``overrides`` (``--set``) apply to every repeat and are listed in the record, which the CLI then writes beside the
profile's own (``bench_path``), so that a trial never replaces the measurement of the profile as committed.
"""

from __future__ import annotations

import io
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from emolib.bench.common import hardware
from emolib.pipeline.runner import Tee, run_profile, sum_breakdowns

TARGET_S = 600.0
"""Issue 18: the smoke profile in 10 minutes or less on the 2-core CPU machine, after setup."""


def fresh_root(profile_path: Path, source: Path, dest: Path, name: str) -> None:
    shutil.copytree(source / "notebooks", dest / "notebooks")
    (dest / "params").mkdir(parents=True)
    shutil.copy2(profile_path, dest / "params" / f"{name}.yaml")
    published = source / "results" / "published"
    if published.is_dir():
        shutil.copytree(published, dest / "results" / "published")


def bench_profile(workdir: Path, profile: str = "smoke", *, repeats: int = 3, root: Path | None = None,
                  kernel: str | None = None, out: TextIO | None = None,
                  jobs: int | str | None = None, keep: Path | None = None,
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the profile (a name or a file, as ``emolib run`` takes it) ``repeats`` times from scratch under
    ``workdir``; see the module docstring. The runner's output also goes to ``out`` (the console from the CLI). A
    failed run raises with the end of the runner's output. ``keep``: a folder (absent or empty) the last repeat's
    folder moves to instead of being deleted, so its records can be read afterwards (tests/test_smoke_scores.py
    scores them with ``EMOLIB_SMOKE_ROOT``)."""
    if keep is not None and Path(keep).exists() and any(Path(keep).iterdir()):
        raise ValueError(f"{keep}: the folder to keep the last repeat in must be absent or empty")
    from emolib.io import read_json
    from emolib.pipeline.overrides import Adjuster
    from emolib.pipeline.profile import load_profile

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    adjuster = Adjuster(list(overrides))
    prof = load_profile(profile, root, adjust=adjuster)
    adjuster.check()  # an override no run takes fails here, before the first repeat
    name = prof.name
    done = []
    for i in range(repeats):
        work = Path(workdir) / f"repeat-{i}"
        fresh_root(prof.path, prof.root, work, name)
        captured = io.StringIO()
        if out is not None:
            out.write(f"--- {name}: repeat {i + 1} of {repeats} in {work}\n")
        t0 = time.monotonic()
        code = run_profile(name, root=work, out=Tee(captured, out) if out is not None else captured, kernel=kernel,
                           jobs=jobs, overrides=overrides)
        wall = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(f"profile {name} failed in repeat {i} (exit {code}):\n{captured.getvalue()[-3000:]}")
        state = read_json(work / "results" / name / ".runner" / "state.json")
        runs = {key: {"seconds": entry["seconds"], "breakdown": entry.get("breakdown", {})}
                for key, entry in state.items()}
        done.append({"wall_s": round(wall, 2), "runs": runs,
                     "stages": sum_breakdowns(r["breakdown"] for r in runs.values())})
        if keep is not None and i == repeats - 1:
            Path(keep).mkdir(parents=True, exist_ok=True)
            Path(keep).rmdir()
            shutil.move(str(work), str(keep))
        else:
            shutil.rmtree(work, ignore_errors=True)
    from emolib.pipeline.runner import resolve_jobs

    walls = [r["wall_s"] for r in done]
    median = statistics.median(walls)
    return {
        "benchmark": name, "profile": name, "overrides": list(overrides), "repeats": done, "wall_s": walls,
        "median_s": round(median, 2), "spread_s": [min(walls), max(walls)],
        "target_s": TARGET_S, "target_met": median <= TARGET_S, "hardware": hardware(),
        "jobs": resolve_jobs(prof.jobs if jobs is None else jobs),
        "notes": ["each repeat: a fresh folder with the notebooks, the profile and results/published, the installed "
                  "environment reused (setup not timed); runs: the runner's per-run breakdown (kernel = kernel "
                  "start and shutdown, papermill and writing the notebook; other = untagged cells)"],
    }


def bench_path(bench_dir: Path, profile: str, overrides: Sequence[str] = ()) -> Path:
    """Where a profile benchmark's record goes: ``<profile>.json``, or ``<profile>-set.json`` when ``overrides``
    changed the profile."""
    return Path(bench_dir) / (f"{profile}-set.json" if overrides else f"{profile}.json")
