"""Profiles: the ordered notebook runs of ``params/<profile>.yaml`` and their validation.

A profile file::

    name: smoke                      # optional, defaults to the file stem
    description: ...
    kernel: emo                      # optional Jupyter kernel name
    jobs: auto                       # optional: runs at a time (default 1; auto: one per CPU core)
    parameters: {device: cpu}        # given to every run whose notebook declares the name
    inputs: [emolib]                 # declared inputs of every step (files or folders)
    steps:
      - name: data
        notebook: notebooks/01_data.ipynb
        parameters: {size: smoke}    # shared by the runs of this step
        inputs: []                   # extra declared inputs
        outputs: [results/{profile}/cache/{dataset}/index.jsonl]   # {name}: the run's parameter
        runs:                        # optional: the same notebook several times
          - {id: iemocap, dataset: iemocap}
          - {id: mosei, dataset: mosei}

Every run receives the parameter ``profile`` (the profile name) when its notebook declares it; ``{profile}`` in a
string parameter is replaced by it. Paths in a profile are relative to the repository root (the folder holding
``params/``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STEP_KEYS = {"name", "notebook", "parameters", "inputs", "outputs", "runs", "description"}
_PROFILE_KEYS = {"name", "description", "kernel", "jobs", "parameters", "inputs", "steps"}


class ProfileError(Exception):
    """A profile cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Run:
    """One papermill execution: a notebook with its final parameters."""

    step: str
    key: str  # unique within the profile: "<step>" or "<step>:<run id>"
    notebook: Path
    parameters: dict[str, Any]
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    # Names offered by the profile (its ``parameters`` and ``profile``): given only where the notebook declares them.
    optional: frozenset[str] = frozenset({"profile"})

    @property
    def output_name(self) -> str:
        return self.key.replace(":", "__") + ".ipynb"


@dataclass
class Profile:
    name: str
    path: Path
    root: Path
    description: str = ""
    kernel: str | None = None
    runs: list[Run] = field(default_factory=list)
    # Runs executed at a time by the runner (``emolib.pipeline.runner``): an int >= 1, or "auto" (one per CPU core).
    jobs: int | str = 1

    @property
    def steps(self) -> list[str]:
        return list(dict.fromkeys(r.step for r in self.runs))


def resolve_profile_path(arg: str | Path, root: Path | None = None) -> Path:
    """Accept ``params/smoke.yaml``, ``smoke.yaml`` or plain ``smoke``."""
    p = Path(arg)
    root = root or Path.cwd()
    candidates = [p, root / p, root / "params" / p, root / "params" / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(x.stem for x in (root / "params").glob("*.yaml")) if (root / "params").is_dir() else []
    raise ProfileError(f"{arg}: no such profile file (known profiles: {', '.join(known) or 'none'})")


# adjust(step, notebook, parameters) -> parameters: applied to each run before its paths are filled (overrides,
# rehearsal); see emolib.pipeline.overrides.
Adjust = Callable[[str, Path, dict[str, Any]], dict[str, Any]]


def load_profile(arg: str | Path, root: Path | None = None, *, adjust: Adjust | None = None,
                 name_suffix: str = "") -> Profile:
    """Load and validate a profile. ``adjust`` rewrites each run's parameters; ``name_suffix`` renames the
    profile (a rehearsal of ``iemocap`` is ``iemocap-rehearsal``, with its own results folder)."""
    path = resolve_profile_path(arg, root)
    root = root.resolve() if root else path.parent.parent
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProfileError(f"{path}: {where}malformed YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a mapping with a 'steps' list")
    _reject_unknown(path, "profile", data, _PROFILE_KEYS)
    name = str(data.get("name") or path.stem) + name_suffix
    common = _mapping(path, "parameters", data.get("parameters"))
    common_inputs = _paths(path, root, "inputs", data.get("inputs"))
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ProfileError(f"{path}: 'steps' must be a non-empty list")
    profile = Profile(name, path, root, str(data.get("description") or ""), data.get("kernel"),
                      jobs=check_jobs(data.get("jobs", 1), f"{path}: jobs"))
    seen: set[str] = set()
    for i, step in enumerate(steps, 1):
        for run in _expand_step(path, root, i, step, common, common_inputs, name, adjust):
            if run.key in seen:
                raise ProfileError(f"{path}: step {i}: duplicate run name {run.key!r}")
            seen.add(run.key)
            profile.runs.append(run)
    return profile


def _expand_step(path, root, index, step, common, common_inputs, profile_name, adjust=None) -> list[Run]:
    if not isinstance(step, dict):
        raise ProfileError(f"{path}: step {index}: must be a mapping with 'name' and 'notebook'")
    _reject_unknown(path, f"step {index}", step, _STEP_KEYS)
    name = step.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProfileError(f"{path}: step {index}: 'name' must be a simple identifier, got {name!r}")
    nb = step.get("notebook")
    if not isinstance(nb, str):
        raise ProfileError(f"{path}: step {name!r}: 'notebook' is required")
    notebook = (root / nb).resolve()
    own = _mapping(path, f"step {name!r} parameters", step.get("parameters"))
    params = {**common, **own}
    optional = frozenset({"profile", *common}) - set(own)
    raw_inputs = _strings(path, f"step {name!r} inputs", step.get("inputs"))
    raw_outputs = _strings(path, f"step {name!r} outputs", step.get("outputs"))

    def files(values: list[str], run_params: dict[str, Any], where: str) -> tuple[Path, ...]:
        return tuple((root / _fill(path, where, v, run_params)).resolve() for v in values)

    def final(p: dict[str, Any]) -> dict[str, Any]:
        # "{profile}" in a string parameter is the profile name (so a rehearsal's paths move with it)
        p = {k: v.replace("{profile}", profile_name) if isinstance(v, str) else v for k, v in p.items()}
        return adjust(name, notebook, p) if adjust is not None else p

    runs = step.get("runs")
    if runs is None:
        p = final({"profile": profile_name, **params})
        return [Run(name, name, notebook, p, common_inputs + files(raw_inputs, p, f"step {name!r}"),
                    files(raw_outputs, p, f"step {name!r}"), optional)]
    if not isinstance(runs, list) or not runs:
        raise ProfileError(f"{path}: step {name!r}: 'runs' must be a non-empty list of parameter mappings")
    out = []
    for j, extra in enumerate(runs):
        extra = dict(_mapping(path, f"step {name!r} run {j + 1}", extra))
        run_id = str(extra.pop("id", j + 1))
        if not _NAME.match(run_id):
            raise ProfileError(f"{path}: step {name!r} run {j + 1}: id {run_id!r} is not a simple identifier")
        p = final({"profile": profile_name, **params, **extra})
        where = f"step {name!r} run {run_id!r}"
        out.append(Run(name, f"{name}:{run_id}", notebook, p, common_inputs + files(raw_inputs, p, where),
                       files(raw_outputs, p, where), optional - set(extra)))
    return out


def check_jobs(value: Any, where: str = "jobs") -> int | str:
    """A valid ``jobs`` value (an int >= 1 or "auto"), or a ProfileError naming ``where``."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    raise ProfileError(f"{where}: must be a whole number >= 1 or 'auto', got {value!r}")


def _reject_unknown(path, where, data, allowed) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProfileError(f"{path}: {where}: unknown key(s) {', '.join(unknown)} "
                           f"(allowed: {', '.join(sorted(allowed))})")


def _mapping(path, where, value) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProfileError(f"{path}: {where}: must be a mapping of names to values")
    return dict(value)


def _strings(path, where, value) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{path}: {where}: must be a list of paths")
    return list(value)


def _paths(path, root, where, value) -> tuple[Path, ...]:
    return tuple((root / v).resolve() for v in _strings(path, where, value))


def _fill(path, where, value: str, params: dict[str, Any]) -> str:
    """``{name}`` in an input or output path takes the run's parameter value (``{profile}``, ``{dataset}``)."""
    try:
        return value.format_map(params)
    except (KeyError, IndexError, ValueError) as err:
        raise ProfileError(f"{path}: {where}: cannot fill {value!r} from the run's parameters ({err})") from None
