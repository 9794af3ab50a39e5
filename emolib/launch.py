"""One experiment as a command (``emolib train``), and its launch in several processes through HF accelerate.

``emolib train`` trains one :class:`emolib.experiment.Experiment` (the object the training notebooks build) given
as a YAML/JSON file with the same keys, plus ``seeds`` and ``resume``, or as flags::

    emolib train exp.yaml
    emolib train --profile smoke --model fv2es --cache-dir results/smoke/cache/iemocap --config tiny \\
        --set train.epochs=2 --set train.batch_size=8 --set frames.face_size=48 --seeds 0 1

The file (``--set`` and the flags override it)::

    profile: smoke
    model: fv2es
    cache_dir: results/smoke/cache/iemocap
    config: tiny
    train: {epochs: 2, batch_size: 8, lr: 0.001, device: cpu}
    frames: {face_size: 48}
    seeds: [0]

It writes the same run records and checkpoints as the notebooks, in every launch mode:

* one process: ``emolib train ...``;
* N processes of accelerate / torch.distributed: ``accelerate launch --multi_gpu --num_processes N -m emolib
  train ...`` or ``torchrun --nproc_per_node N -m emolib train ...`` (gloo on a machine without GPU), or
  ``emolib train --num-processes N ...``, which runs the former for you (:func:`launch`).

``accelerate launch --cpu --num_processes N`` starts **one** process on one machine (accelerate runs several CPU
processes only through ``mpirun``); ``emolib train`` says so on stderr and trains in that one process.

:func:`launch` is what ``run_experiment(..., num_processes=N)`` (notebooks 02-05's ``num_processes``) calls: it
writes the experiment to a spec file, runs ``accelerate launch`` of ``emolib train`` in a subprocess, streams its
output, and reads the run records back. A subprocess rather than accelerate's ``notebook_launcher``: the latter
forks the notebook's kernel, which fails once CUDA is initialised in it (any earlier cell that touched the GPU)
and cannot fork-start several CUDA processes at all, and the forked children inherit papermill's kernel state
(threads, open sockets, the live ``Accelerator``); a fresh ``accelerate launch`` is the path the README
documents for the command line too, so the notebook and the command line run exactly the same code.

Only standard-library imports at module level: ``emolib --help`` builds this command's parser.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

# Keys of a spec file besides the Experiment fields.
RUN_KEYS = ("seeds", "resume")
# Experiment fields that hold a mapping; ``--set FIELD.KEY=VALUE`` sets one entry.
MAPPING_FIELDS = ("model_overrides", "loss_params", "train", "frames", "split")
_FLAGS = ("profile", "model", "cache_dir", "config", "variant", "loss", "sims_labels", "results_root")


class LaunchError(RuntimeError):
    """A launched training failed; the message is one line naming the run and the exit status."""


# ------------------------------------------------------------------------------------------------ the spec


def experiment_keys() -> list[str]:
    import dataclasses

    from emolib.experiment import Experiment

    return [f.name for f in dataclasses.fields(Experiment)]


def _yaml_value(text: str) -> Any:
    import re

    import yaml

    value = yaml.safe_load(text) if text.strip() else ""
    # YAML 1.1 reads "1e-5" (no dot) as a string
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of a YAML or JSON experiment file; one-line ``ValueError`` naming the file otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML/JSON ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: an experiment file is a mapping of Experiment keys, got {type(data).__name__}")
    return dict(data)


def apply_sets(spec: dict[str, Any], items: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """``["train.epochs=2", "config=tiny"]`` applied to ``spec`` (values parsed as YAML)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{source} {item!r}: expected KEY=VALUE or FIELD.KEY=VALUE")
        try:
            value = _yaml_value(text)
        except Exception as err:  # noqa: BLE001 - any YAML problem is the user's value
            raise ValueError(f"{source} {item!r}: the value is not valid YAML ({err})") from None
        field, dot, sub = key.partition(".")
        if dot:
            if field not in MAPPING_FIELDS:
                raise ValueError(f"{source} {item!r}: only {', '.join(MAPPING_FIELDS)} take FIELD.KEY=VALUE")
            current = out.get(field) or {}
            if not isinstance(current, Mapping):
                raise ValueError(f"{source} {item!r}: {field} is not a mapping")
            out[field] = {**current, sub: value}
        else:
            out[key] = value
    return out


def experiment_from_spec(spec: Mapping[str, Any], source: str = "experiment") -> tuple[Any, list[int], bool]:
    """Validate a spec and return ``(Experiment, seeds, resume)``; every problem is a one-line ``ValueError``
    that starts with ``source`` (the file name, or "flags")."""
    from emolib.data.dataset import FrameOptions
    from emolib.experiment import Experiment
    from emolib.train import TrainConfig

    known = experiment_keys()
    unknown = sorted(set(spec) - set(known) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known + list(RUN_KEYS))}")
    missing = [k for k in ("profile", "model", "cache_dir") if not spec.get(k)]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)} (a file key or --{missing[0].replace('_', '-')})")
    if not (Path(spec["cache_dir"]) / "index.jsonl").is_file():
        raise ValueError(f"{source}: cache_dir {spec['cache_dir']}: not a finished emolib cache (no index.jsonl; "
                         "run emolib prepare first)")
    for key in MAPPING_FIELDS:
        if key in spec and spec[key] is not None and not isinstance(spec[key], Mapping):
            raise ValueError(f"{source}: {key} must be a mapping, got {spec[key]!r}")
    fields = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()
              if k in known and v is not None}
    train = fields.get("train", {})
    if "seed" in train:
        raise ValueError(f"{source}: train.seed is set per run from seeds; give seeds: [{train['seed']}] instead")
    try:
        TrainConfig.from_dict(train)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: train: {err}") from None
    try:
        FrameOptions(**fields.get("frames", {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: frames: {err}") from None
    seeds = spec.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                       for s in seeds):
        raise ValueError(f"{source}: seeds must be a non-empty list of integers >= 0, got {spec.get('seeds')!r}")
    resume = spec.get("resume", True)
    if not isinstance(resume, bool):
        raise ValueError(f"{source}: resume must be true or false, got {resume!r}")
    try:
        exp = Experiment(**fields)
    except TypeError as err:
        raise ValueError(f"{source}: {err}") from None
    return exp, seeds, resume


def spec_of(exp: Any, seeds: Sequence[int] = (0,), resume: bool = True) -> dict[str, Any]:
    """The spec (plain JSON types) that ``experiment_from_spec`` turns back into ``exp``."""
    import dataclasses

    from emolib.records import to_builtin

    return to_builtin({**dataclasses.asdict(exp), "seeds": [int(s) for s in seeds], "resume": bool(resume)})


# ------------------------------------------------------------------------------------------------ launching


def distributed_world() -> int:
    """The number of processes of the torch.distributed job this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(spec_path: str | os.PathLike, num_processes: int, extra: Sequence[str] = ()) -> list[str]:
    """``accelerate launch`` of ``emolib train``: its torch.distributed launcher (``--multi_gpu``) starts the
    processes, on the GPUs when there are, on gloo otherwise (``--cpu`` would start only one on one machine)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            # a free port, so that two launches on one machine (tests, two notebooks) never meet
            "--main_process_port", str(_free_port()),
            "-m", "emolib", "train", str(spec_path), *extra]


def _stream(cmd: Sequence[str], out: TextIO) -> int:
    """Run ``cmd``, copying its output line by line to ``out``; stop its whole process group on interruption."""
    import signal
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
        return proc.wait()
    except BaseException:
        # A notebook interrupt or a failing reader must not leave training processes behind.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        raise


def run_dir_of(record_file: str | os.PathLike) -> Path:
    """The checkpoint folder beside a run record, as ``run_experiment`` lays them out:
    ``<root>/<profile>/runs/<run>/<dataset>/<protocol>/<stem>.json`` -> ``<root>/<profile>/checkpoints/<run>/
    <dataset>/<stem>``."""
    path = Path(record_file)
    return path.parents[4] / "checkpoints" / path.parents[2].name / path.parents[1].name / path.stem


def launch(exp: Any, seeds: Sequence[int] = (0,), num_processes: int = 2, *, resume: bool = True,
           model_hook: Callable[[Any], None] | None = None, out: TextIO | None = None) -> list[dict[str, Any]]:
    """Train ``exp`` for each seed in ``num_processes`` processes (``accelerate launch -m emolib train``) and
    return the run records it wrote, as ``run_experiment`` does. ``model_hook`` gets each seed's best model,
    rebuilt from its ``best.pt``. Raises :class:`LaunchError` (one line) when the launch fails."""
    import tempfile

    from emolib.io import read_json, write_json

    if num_processes < 2:
        raise ValueError(f"launch needs num_processes >= 2, got {num_processes}; run_experiment trains in-process")
    out = out or sys.stdout
    exp_spec = spec_of(exp, seeds, resume)
    experiment_from_spec(exp_spec, f"{exp.run_name}")  # a bad experiment fails here, not in N processes
    with tempfile.TemporaryDirectory(prefix="emolib-launch-") as tmp:
        spec_path, manifest = Path(tmp) / "experiment.json", Path(tmp) / "records.json"
        write_json(spec_path, exp_spec)
        cmd = launch_command(spec_path, num_processes, ["--records-out", str(manifest)])
        out.write(f"launching {exp.run_name} on {exp.cache_dir} in {num_processes} processes: "
                  f"accelerate launch --multi_gpu --num_processes {num_processes} -m emolib train\n")
        code = _stream(cmd, out)
        if code != 0 or not manifest.is_file():
            raise LaunchError(f"{exp.run_name} on {exp.cache_dir}: `accelerate launch --num_processes {num_processes} "
                              f"-m emolib train` failed with exit status {code} (its output is above)")
        files = read_json(manifest)
    records = _read_records(files)
    if model_hook is not None:
        from emolib.predict import load_checkpoint

        for file, record in zip(files, records):
            model_hook(load_checkpoint(run_dir_of(file) / "best.pt", record=record, fuse=False).model)
    return records


def _read_records(files: Sequence[str]) -> list[dict[str, Any]]:
    from emolib.io import read_json
    from emolib.records import validate_record

    records = []
    for file in files:
        record = read_json(file)
        validate_record(record, source=file)
        records.append(record)
    return records


def _record_file(exp: Any, record: Mapping[str, Any]) -> Path:
    """Where ``run_experiment`` wrote ``record``."""
    import inspect

    from emolib.records import record_path

    fold = (record.get("extra") or {}).get("fold")
    extra = {"fold": fold} if fold is not None and "fold" in inspect.signature(record_path).parameters else {}
    return record_path(Path(exp.results_root), exp.profile, exp.run_name, record["dataset"], record["protocol"],
                       int(record["seed"]), **extra)


# ------------------------------------------------------------------------------------------------ the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``emolib train`` (also used by ``python -m emolib.launch``)."""
    p.add_argument("spec", nargs="?", help="experiment file (YAML or JSON) with the keys of emolib.experiment."
                                           "Experiment, plus seeds and resume; flags and --set override it")
    p.add_argument("--profile", help="results go to <results-root>/<profile>/")
    p.add_argument("--model", help="registered model name (emolib list model)")
    p.add_argument("--cache-dir", dest="cache_dir", help="processed cache folder (emolib prepare)")
    p.add_argument("--config", help="the model's named configuration (tiny, paper, ...)")
    p.add_argument("--variant", help="run-name suffix that keeps runs of one model apart")
    p.add_argument("--loss", help="registered loss (default: the task's loss, emolib.labels.TASK_LOSS)")
    p.add_argument("--sims-labels", dest="sims_labels", help="CH-SIMS labels: M or M,A,T,V")
    p.add_argument("--results-root", dest="results_root", help="default: results")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set an Experiment key, or one entry of train/frames/model_overrides/loss_params/split as "
                        "FIELD.KEY=VALUE (YAML values), e.g. --set train.epochs=2")
    p.add_argument("--no-resume", dest="no_resume", action="store_true",
                   help="start over even when a checkpoint of the run exists")
    p.add_argument("--num-processes", dest="num_processes", type=int,
                   help="train in N processes (accelerate launch; GPUs when available, else gloo on the CPU)")
    p.add_argument("--records-out", dest="records_out", help="write the run records' paths to this JSON file "
                                                               "(emolib.launch reads them back)")


def experiment_from_args(args: argparse.Namespace) -> tuple[Any, list[int], bool]:
    source = args.spec or "flags"
    spec = load_spec(args.spec) if args.spec else {}
    spec = apply_sets(spec, args.set or [], "--set")
    for key in _FLAGS:
        if getattr(args, key, None) is not None:
            spec[key] = getattr(args, key)
    if args.seeds is not None:
        spec["seeds"] = list(args.seeds)
    if args.no_resume:
        spec["resume"] = False
    return experiment_from_spec(spec, source)


def _one_cpu_process_warning() -> str | None:
    # `accelerate launch --cpu --num_processes N` on one machine runs the script once (its simple launcher),
    # leaving only MASTER_PORT behind; say so rather than let "2 processes" silently mean one.
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        return ("warning: `accelerate launch --cpu` started one process: on one machine accelerate starts several "
                "CPU processes only through mpirun. For N processes on gloo use `accelerate launch --multi_gpu "
                "--num_processes N`, `torchrun --nproc_per_node N` or `emolib train --num-processes N`.")
    return None


def run_command(args: argparse.Namespace) -> int:
    """``emolib train``: 0 on success, 2 on a bad experiment (one line), 1 when a launched training failed."""
    try:
        exp, seeds, resume = experiment_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    world, rank = distributed_world(), int(os.environ.get("RANK", "0") or 0)
    wanted = args.num_processes
    if wanted is not None and wanted < 1:
        print(f"error: --num-processes must be >= 1, got {wanted}", file=sys.stderr)
        return 2
    if wanted is not None and wanted > 1 and world == 1:
        try:
            records = launch(exp, seeds, wanted, resume=resume)
        except (LaunchError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if args.records_out:  # the launched rank 0 printed the records and their summary
            from emolib.io import write_json

            write_json(args.records_out, [str(_record_file(exp, r)) for r in records])
        return 0
    if wanted is not None and world > 1 and wanted != world:
        print(f"error: --num-processes {wanted} inside a launch of {world} processes", file=sys.stderr)
        return 2
    warning = _one_cpu_process_warning()
    if warning:
        print(warning, file=sys.stderr)
    from emolib.data.cache import CacheError
    from emolib.experiment import run_experiment

    try:
        records = run_experiment(exp, seeds, resume=resume)
    except (ValueError, CacheError) as err:
        # configuration problems found while building the run (cache, batch split, protocols): one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        _report(records, args.records_out, [_record_file(exp, r) for r in records])
    return 0


def _report(records: list[dict[str, Any]], records_out: str | None, files: list[Path]) -> None:
    from emolib.experiment import experiment_summary
    from emolib.io import write_json

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"run records not where emolib.launch expects them (run_experiment's layout changed?): "
                           f"{missing}")
    if records_out:
        write_json(records_out, [str(f) for f in files])
    for f in files:
        print(f"run record: {f}")
    print(experiment_summary(records).to_string(index=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emolib train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
