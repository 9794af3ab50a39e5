"""Run a profile's notebooks in order with papermill, each in its own kernel.

Behaviour (see README "Pipeline runner"):
- cell output is streamed live to the console and to ``results/<profile>/logs/<run>.log``;
- executed notebooks go to ``results/<profile>/notebooks/``; a failed one is kept as far as it ran;
- a run whose notebook, parameters and declared inputs are unchanged since its last success, and whose declared
  outputs exist, is skipped (``force`` reruns);
- ``only`` / ``start_from`` select part of the profile by step name or run key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from emolib.io import read_json, sha256_file, usable_cores, write_json
from emolib.pipeline.profile import Profile, ProfileError, Run, check_jobs
from emolib.records import RECORD_LOG_ENV

KERNEL_NAME = "emo"
# Whole lines on the console: the runner's own lines and those of concurrent runs (LinePrefix) take turns.
_CONSOLE = threading.Lock()

STAGES = ("synth", "prepare", "train", "evaluate", "tables")
"""Where a run's time goes. A notebook cell tagged ``stage:<name>`` counts for that stage; untagged cells count as
"other"; "kernel" is the rest of the run's wall time (kernel start and shutdown, papermill, writing the notebook)."""
PARTS = ("kernel", *STAGES, "other")


class RunnerError(Exception):
    """A problem found before executing anything (bad selection, notebook missing, undeclared parameter)."""


@dataclass
class Outcome:
    run: Run
    status: str  # "ran", "skipped", "failed", "not run", "planned"
    seconds: float = 0.0
    notebook_out: Path | None = None
    log: Path | None = None
    error: str = ""
    missing_outputs: list[Path] = field(default_factory=list)
    breakdown: dict[str, float] = field(default_factory=dict)
    records: list[str] = field(default_factory=list)  # run records written, relative to the results folder


def stage_seconds(notebook: Path, wall: float) -> dict[str, float]:
    """Seconds per part of one run, from the executed notebook's papermill cell durations (see ``STAGES``):
    ``{"kernel": ..., <stage>: ..., "other": ...}``, parts with no time left out, summing to ``wall``."""
    import nbformat

    parts = dict.fromkeys(PARTS, 0.0)
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError):  # no notebook written (a run that failed to start)
        return {"kernel": round(wall, 2)}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        seconds = float(cell.metadata.get("papermill", {}).get("duration") or 0.0)
        stage = next((t.split(":", 1)[1] for t in cell.metadata.get("tags", []) if t.startswith("stage:")), "other")
        parts[stage if stage in parts else "other"] += seconds
    parts["kernel"] = max(0.0, wall - sum(parts.values()))
    return {k: round(v, 2) for k, v in parts.items() if v > 0}


def format_breakdown(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in parts.items())


def sum_breakdowns(breakdowns: Iterable[dict[str, float]]) -> dict[str, float]:
    """The parts of several runs added up, in ``PARTS`` order, parts with no time left out."""
    totals = dict.fromkeys(PARTS, 0.0)
    for parts in breakdowns:
        for k, v in parts.items():
            totals[k] += v
    return {k: round(v, 2) for k, v in totals.items() if v > 0}


def results_dir(profile: Profile) -> Path:
    return profile.root / "results" / profile.name


def select_runs(profile: Profile, only: str | None = None, start_from: str | None = None) -> list[Run]:
    runs = profile.runs
    if only and start_from:
        raise RunnerError("use either --only or --from, not both")
    for label, sel in (("--only", only), ("--from", start_from)):
        if sel and not any(_matches(r, sel) for r in runs):
            choices = ", ".join(dict.fromkeys([r.step for r in runs] + [r.key for r in runs]))
            raise RunnerError(f"{profile.path}: {label} {sel!r} matches no step (steps and runs: {choices})")
    if only:
        return [r for r in runs if _matches(r, only)]
    if start_from:
        first = next(i for i, r in enumerate(runs) if _matches(r, start_from))
        return runs[first:]
    return list(runs)


def _matches(run: Run, sel: str) -> bool:
    return sel in (run.step, run.key)


def declared_parameters(notebook: Path) -> dict[str, str]:
    """Names assigned in the notebook's ``parameters`` cell, with their default source text.

    Parsed with ``ast`` rather than papermill's line-based inspection, which gives up on lines whose comments
    hold quotes or parentheses."""
    import ast

    import nbformat

    if not notebook.is_file():
        raise RunnerError(f"{notebook}: notebook not found")
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as err:  # noqa: BLE001 - nbformat raises several unrelated types for unreadable files
        raise RunnerError(f"{notebook}: cannot read notebook ({err})") from None
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as err:
        raise RunnerError(f"{notebook}: parameters cell line {err.lineno}: {err.msg}") from None
    declared = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                declared[t.id] = ast.get_source_segment(cells[0].source, node.value) if node.value else ""
    return declared


def check_runs(runs: Iterable[Run]) -> dict[Path, dict[str, str]]:
    """Fail early, before any execution, on missing notebooks and undeclared parameters.

    Returns the declared parameters of each notebook."""
    cache: dict[Path, dict[str, str]] = {}
    for run in runs:
        if run.notebook not in cache:
            declared = declared_parameters(run.notebook)
            if not declared:
                raise RunnerError(f"{run.notebook}: no cell tagged 'parameters'")
            cache[run.notebook] = declared
        declared = cache[run.notebook]
        unknown = sorted(set(run.parameters) - set(declared) - run.optional)
        if unknown:
            raise RunnerError(
                f"{run.notebook}: run {run.key!r} sets parameter(s) {', '.join(unknown)} that the notebook does not "
                f"declare (declared: {', '.join(sorted(declared))})"
            )
    return cache


def effective_parameters(run: Run, declared: dict) -> dict:
    # Profile-wide names are offered to every notebook but only injected where they are declared.
    return {k: v for k, v in run.parameters.items() if k not in run.optional or k in declared}


def fingerprint(run: Run, parameters: dict) -> str:
    h = hashlib.sha256()
    h.update(b"notebook\0" + sha256_file(run.notebook).encode())
    h.update(b"parameters\0" + json.dumps(parameters, sort_keys=True, default=str).encode())
    for path in run.inputs:
        h.update(b"input\0" + str(path).encode() + b"\0" + _input_digest(path).encode())
    return h.hexdigest()


def _input_digest(path: Path) -> str:
    """Files by content; folders by their file list with sizes and modification times (content would be too slow
    for multi-GB caches). A missing input is part of the fingerprint too, so creating it triggers a rerun."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return "missing"


def resolve_jobs(jobs: int | str) -> int:
    """Runs at a time: ``jobs`` itself, or for "auto" one per CPU core this process may use."""
    jobs = check_jobs(jobs)
    if jobs == "auto":
        return usable_cores()
    return int(jobs)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def kernel_env(jobs: int) -> dict[str, str]:
    """Environment for the kernels when ``jobs`` run at once: the cores shared out (torch, MKL and OpenMP read
    these at start), so that concurrent runs do not oversubscribe the machine (several threads per core slowed
    training steps up to 7x in our measurement). A thread count set by the user is kept."""
    if jobs <= 1:
        return {}
    threads = str(max(1, resolve_jobs("auto") // jobs))
    return {name: os.environ.get(name, threads) for name in THREAD_VARIABLES}


def env_kernel_manager(env: dict[str, str], cwd: Path):
    """A kernel manager class (papermill's ``kernel_manager_class``) whose kernels start in ``cwd`` with ``env``
    added to this process's environment: per-run settings without touching process-wide state (``os.environ``,
    the working directory), which concurrent runs share."""
    from jupyter_client.manager import AsyncKernelManager

    extra = dict(env)

    class EnvKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):  # type: ignore[override]
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **extra}
            kw["cwd"] = str(cwd)
            return await super().start_kernel(**kw)

    return EnvKernelManager


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def dependencies(runs: list[Run], base: Path) -> dict[str, set[str]]:
    """For each run (in profile order), the earlier runs it must wait for.

    A run waits for the earlier runs whose declared outputs lie at, under or above one of its declared inputs.
    An input inside the results folder ``base`` that no earlier run declares (``results/<profile>/runs``: every
    training run writes there) makes it wait for every earlier run, so a step that reads what all others wrote
    (robustness, tables) starts last. Inputs outside ``base`` (the package, ``results/published``) order nothing."""
    deps: dict[str, set[str]] = {}
    for i, run in enumerate(runs):
        need: set[str] = set()
        for inp in run.inputs:
            producers = {e.key for e in runs[:i] if any(_overlaps(inp, o) for o in e.outputs)}
            if producers:
                need |= producers
            elif _overlaps(inp, base):
                need |= {e.key for e in runs[:i]}
        deps[run.key] = need
    return deps


def ancestors(deps: dict[str, set[str]]) -> dict[str, set[str]]:
    """Every run each run waits for, directly or through others (``deps`` as from ``dependencies``)."""
    out: dict[str, set[str]] = {}
    for key in deps:  # profile order: a run's dependencies come before it
        out[key] = set(deps[key]).union(*(out.get(d, set()) for d in deps[key]))
    return out


class LinePrefix:
    """Console writer for concurrent runs: whole lines only, each starting with ``prefix`` (the run's key)."""

    def __init__(self, target: TextIO, prefix: str) -> None:
        self.target, self.prefix, self.partial = target, prefix, ""

    def write(self, text: str) -> int:
        # tqdm-style carriage returns end a line too (otherwise one line would hold a whole progress bar's history)
        lines = (self.partial + text.replace("\r", "\n")).split("\n")
        self.partial = lines.pop()
        if lines:
            with _CONSOLE:
                self.target.write("".join(f"{self.prefix}{line}\n" for line in lines if line.strip()))
                self.target.flush()
        return len(text)

    def flush(self) -> None:
        pass  # partial lines wait for their end (flush_partial at the end of the run)

    def flush_partial(self) -> None:
        if self.partial.strip():
            self.write("\n")
        self.partial = ""


class Tee:
    """File-like object papermill writes cell streams to: console and log file at once."""

    def __init__(self, *targets: TextIO) -> None:
        self.targets = targets

    def write(self, text: str) -> int:
        for t in self.targets:
            t.write(text)
        return len(text)

    def flush(self) -> None:
        for t in self.targets:
            t.flush()


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Return a kernel name that starts this interpreter, installing the kernelspec in sys.prefix if missing.

    Using a kernel bound to ``sys.executable`` matters: a bare ``python3`` spec may resolve to another Python
    on PATH that lacks the stack.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name=f"{name} ({Path(sys.prefix).name})", prefix=sys.prefix)
    return name


class Runner:
    def __init__(self, profile: Profile, *, force: bool = False, kernel: str | None = None, out: TextIO = sys.stdout,
                 jobs: int | str | None = None):
        self.profile = profile
        self.force = force
        self.kernel = kernel or profile.kernel
        self.jobs = resolve_jobs(profile.jobs if jobs is None else jobs)
        self.out = out
        self.base = results_dir(profile)
        self.state_path = self.base / ".runner" / "state.json"

    # state of last successful runs -------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if self.state_path.is_file():
            try:
                return read_json(self.state_path)
            except (OSError, json.JSONDecodeError):
                # A damaged state file only costs a rerun; say so instead of failing.
                self._print(f"warning: {self.state_path} is unreadable; every step will run")
        return {}

    def _save_state(self, state: dict) -> None:
        write_json(self.state_path, state)

    def _print(self, text: str) -> None:
        with _CONSOLE:
            self.out.write(text + "\n")
            self.out.flush()

    # planning ----------------------------------------------------------------------------------------------
    def plan(self, runs: list[Run]) -> list[tuple[Run, dict, str, bool]]:
        declared = check_runs(runs)
        state = self._load_state()
        rows = []
        for run in runs:
            params = effective_parameters(run, declared[run.notebook])
            fp, skip = self._status(run, params, state)
            rows.append((run, params, fp, skip))
        return rows

    def _status(self, run: Run, params: dict, state: dict) -> tuple[str, bool]:
        """Fingerprint now and whether the run may be skipped. Execution asks again right before each run,
        because earlier runs of the same invocation may have just written its inputs."""
        fp = fingerprint(run, params)
        outputs_ok = all(p.exists() for p in run.outputs) and (self.base / "notebooks" / run.output_name).exists()
        return fp, not self.force and state.get(run.key, {}).get("fingerprint") == fp and outputs_ok

    def dry_run(self, runs: list[Run]) -> list[Outcome]:
        rows = self.plan(runs)
        self._print(f"profile {self.profile.name} ({self.profile.path}): {len(rows)} run(s)")
        for i, (run, params, _fp, skip) in enumerate(rows, 1):
            action = "skip (unchanged)" if skip else "run"
            self._print(f"  [{i}/{len(rows)}] {run.key:<32} {action:<17} {_rel(run.notebook, self.profile.root)}")
            self._print(f"        parameters: {json.dumps(params, sort_keys=True, default=str)}")
            for o in run.outputs:
                self._print(f"        output: {_rel(o, self.profile.root)}")
        return [Outcome(r, "planned") for r, *_ in rows]

    # execution ---------------------------------------------------------------------------------------------
    def execute(self, runs: list[Run]) -> list[Outcome]:
        """Run ``runs`` in profile order, up to ``jobs`` at a time: a run starts once every run it depends on
        (``dependencies``) has finished; after a failure nothing new starts and the rest are "not run"."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        rows = self.plan(runs)
        kernel = self.kernel or ensure_kernel()
        jobs = min(self.jobs, len(rows)) or 1
        # Kernels inherit the environment: keep tqdm bars from flooding the streamed console and logs.
        os.environ.setdefault("TQDM_MININTERVAL", "5")
        # papermill streams only stdout/stderr text to the log; a tqdm widget (tqdm.auto in a kernel) never reaches
        # it, so long loops (prepare) report plain progress lines instead (emolib.progress).
        os.environ.setdefault("EMOLIB_PROGRESS", "lines")
        env = kernel_env(jobs)
        if jobs > 1:
            self._print(f"profile {self.profile.name}: {jobs} runs at a time, "
                        f"{env.get('OMP_NUM_THREADS', 'default')} thread(s) each")
        deps = dependencies(self.profile.runs, self.base)
        selected = {run.key for run, *_ in rows}
        waits = {run.key: deps.get(run.key, set()) & selected for run, *_ in rows}
        after = ancestors(waits)
        state = self._load_state()
        outcomes: dict[str, Outcome] = {}
        start_all = time.monotonic()
        pending = list(enumerate(rows, 1))
        running: dict = {}
        failed = False
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while pending or running:
                if not failed:
                    for item in list(pending):
                        (i, (run, params, _, _)) = item
                        if len(running) >= jobs:
                            break
                        if waits[run.key] - {k for k, o in outcomes.items() if o.status in ("ran", "skipped")}:
                            continue
                        pending.remove(item)
                        head = f"[{i}/{len(rows)}] {run.key}"
                        fp, skip = self._status(run, params, state)
                        if skip:
                            self._print(f"{head}: skipped (notebook, parameters and inputs unchanged)")
                            outcomes[run.key] = Outcome(run, "skipped", 0.0,
                                                        self.base / "notebooks" / run.output_name, self._log(run))
                            continue
                        self._print(f"{head}: running {_rel(run.notebook, self.profile.root)} "
                                    f"(elapsed {time.monotonic() - start_all:.1f}s)")
                        # A run that nothing else can accompany (the rest waits for it: robustness, tables)
                        # gets every core instead of its share.
                        alone = not running and all(run.key in after[r.key] for _, (r, *_) in pending)
                        run_env = kernel_env(1) if alone else env
                        future = pool.submit(self._execute_one, run, params, kernel, run_env, prefix=jobs > 1)
                        running[future] = (head, run, fp)
                if not running:
                    break  # a failure, or nothing left that can start
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    head, run, fp = running.pop(future)
                    outcome = future.result()
                    outcomes[run.key] = outcome
                    if outcome.status == "failed":
                        failed = True
                        self._print(f"{head}: FAILED after {outcome.seconds:.1f}s\n  {outcome.error}\n"
                                    f"  partial notebook: {_rel(outcome.notebook_out, self.profile.root)}\n"
                                    f"  log: {_rel(outcome.log, self.profile.root)}")
                        state.pop(run.key, None)
                    else:
                        self._print(f"{head}: done in {outcome.seconds:.1f}s")
                        state[run.key] = {"fingerprint": fp, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "seconds": round(outcome.seconds, 2), "breakdown": outcome.breakdown,
                                          # the run records this run wrote, for cost estimates (rehearsal)
                                          "records": outcome.records}
                    self._save_state(state)
        ordered = [outcomes.get(run.key) or Outcome(run, "not run") for run, *_ in rows]
        self.summary(ordered, time.monotonic() - start_all)
        return ordered

    def _log(self, run: Run) -> Path:
        return self.base / "logs" / (run.output_name[: -len(".ipynb")] + ".log")

    def _execute_one(self, run: Run, params: dict, kernel: str, env: dict[str, str], prefix: bool) -> Outcome:
        """One papermill execution in its own kernel; the kernel gets ``env`` on top of this process's
        environment and lists the run records it writes in a file of its own (``RECORD_LOG_ENV``)."""
        import papermill
        from papermill.exceptions import PapermillExecutionError

        nb_out = self.base / "notebooks" / run.output_name
        log = self._log(run)
        nb_out.parent.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        record_log = self.base / ".runner" / "records" / (run.output_name[: -len(".ipynb")] + ".txt")
        record_log.parent.mkdir(parents=True, exist_ok=True)
        record_log.unlink(missing_ok=True)
        t0 = time.monotonic()
        outcome = Outcome(run, "ran", notebook_out=nb_out, log=log)
        with open(log, "w", encoding="utf-8") as log_fh:
            console = LinePrefix(self.out, f"[{run.key}] ") if prefix else self.out
            tee = Tee(console, log_fh)
            try:
                papermill.execute_notebook(
                    str(run.notebook), str(nb_out), parameters=params, kernel_name=kernel,
                    # No papermill `cwd`: it would os.chdir the whole process, and concurrent runs interleave
                    # those chdirs (a kernel could start in another folder). The kernel gets its folder instead.
                    progress_bar=False, stdout_file=tee, stderr_file=tee,
                    # Once the last cell has replied, everything the run produces is written: kill the kernel
                    # instead of asking it to exit: a kernel with torch and transformers loaded took 2-3 s to stop.
                    shutdown_kernel="immediate",
                    kernel_manager_class=env_kernel_manager({**env, RECORD_LOG_ENV: str(record_log)},
                                                            self.profile.root),
                )
            except PapermillExecutionError as err:
                outcome.status = "failed"
                outcome.error = (f"{_rel(run.notebook, self.profile.root)}: cell {err.cell_index} "
                                 f"(execution count {err.exec_count}): {err.ename}: {err.evalue}")
            except Exception as err:  # noqa: BLE001 - kernel died, notebook unreadable, ...
                outcome.status = "failed"
                outcome.error = f"{_rel(run.notebook, self.profile.root)}: {type(err).__name__}: {err}"
            if outcome.status == "failed":
                log_fh.write(f"\nFAILED: {outcome.error}\n")
            if isinstance(console, LinePrefix):
                console.flush_partial()
        outcome.seconds = time.monotonic() - t0
        outcome.breakdown = stage_seconds(nb_out, outcome.seconds)
        if record_log.is_file():
            written = {Path(line) for line in record_log.read_text(encoding="utf-8").splitlines() if line}
            outcome.records = sorted(_rel(p, self.base) for p in written)
        if outcome.status == "ran":
            outcome.missing_outputs = [p for p in run.outputs if not p.exists()]
            if outcome.missing_outputs:
                outcome.status = "failed"
                outcome.error = "declared output(s) not written: " + ", ".join(
                    _rel(p, self.profile.root) for p in outcome.missing_outputs)
        return outcome

    def summary(self, outcomes: list[Outcome], total: float) -> None:
        root = self.profile.root
        rows = [("step", "status", "time", "where the time went", "outputs")]
        for o in outcomes:
            outs = [_rel(p, root) for p in o.run.outputs] or ([_rel(o.notebook_out, root)] if o.notebook_out else [])
            ran = o.status in ("ran", "failed")
            rows.append((o.run.key, o.status, f"{o.seconds:.1f}s" if ran else "-",
                         format_breakdown(o.breakdown) if ran else "-", ", ".join(outs)))
        totals = sum_breakdowns(o.breakdown for o in outcomes if o.status in ("ran", "failed"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        self._print("")
        for j, r in enumerate(rows):
            self._print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
            if j == 0:
                self._print("  ".join("-" * w for w in widths) + "  -------")
        if totals:
            self._print("all runs: " + format_breakdown(totals))
        self._print(f"\nprofile {self.profile.name}: {total:.1f}s; executed notebooks in "
                    f"{_rel(self.base / 'notebooks', root)}/, logs in {_rel(self.base / 'logs', root)}/")


def _rel(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


def run_profile(profile_arg: str, *, root: Path | None = None, force: bool = False, only: str | None = None,
                start_from: str | None = None, dry_run: bool = False, kernel: str | None = None,
                out: TextIO = sys.stdout, overrides: Iterable[str] = (), rehearse: bool = False,
                jobs: int | str | None = None) -> int:
    """CLI entry: returns the process exit code (0 ok, 1 a notebook failed, 2 bad profile or selection).

    ``overrides``: ``key=value`` / ``step.key=value`` (``--set``); ``rehearse``: the rehearsal of the profile
    (``emolib.pipeline.overrides``), ending with the cost estimate of the real run; ``jobs``: runs at a time
    (default: the profile's ``jobs``)."""
    from emolib.pipeline.overrides import REHEARSAL_SUFFIX, Adjuster
    from emolib.pipeline.profile import load_profile

    try:
        adjuster = Adjuster(list(overrides), rehearse=rehearse)
        profile = load_profile(profile_arg, root, adjust=adjuster,
                               name_suffix=REHEARSAL_SUFFIX if rehearse else "")
        adjuster.check()
        runs = select_runs(profile, only, start_from)
        runner = Runner(profile, force=force, kernel=kernel, out=out, jobs=jobs)
        if dry_run:
            runner.dry_run(runs)
            return 0
        outcomes = runner.execute(runs)
    except (ProfileError, RunnerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = any(o.status == "failed" for o in outcomes)
    if rehearse and not failed:
        from emolib.pipeline.rehearsal import write_estimate

        real = load_profile(profile_arg, root)  # the values the real run will use (epochs, seeds, ...)
        paths = write_estimate(results_dir(profile), {r.key: r.parameters for r in real.runs})
        print((results_dir(profile) / "estimate.md").read_text(encoding="utf-8"), file=out)
        print("estimate: " + ", ".join(str(p) for p in paths), file=out)
    return 1 if failed else 0
