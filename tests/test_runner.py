"""The papermill pipeline runner on tiny notebooks (tests/fixtures/notebooks)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from emolib.pipeline.profile import ProfileError, load_profile
from emolib.pipeline.runner import run_profile

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"

PROFILE = """
name: demo
parameters: {n: 2, only_some_notebooks_declare_this: 1}
steps:
  - name: first
    notebook: notebooks/echo.ipynb
    parameters: {label: first, out_file: out/trace.json}
    outputs: [out/trace.json]
  - name: many
    notebook: notebooks/echo.ipynb
    parameters: {out_file: out/trace.json}
    inputs: [data/input.txt]
    runs:
      - {id: x, label: many-x}
      - {id: y, label: many-y, n: 7}
  - name: last
    notebook: notebooks/echo.ipynb
    parameters: {label: last, out_file: out/trace.json}
"""


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES, tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "demo.yaml").write_text(PROFILE)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("v1")
    return tmp_path


def run(repo: Path, *args: str, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code = run_profile("demo", root=repo, out=out, **kw)
    return code, out.getvalue()


def trace(repo: Path) -> list[dict]:
    p = repo / "out" / "trace.json"
    return json.loads(p.read_text())["runs"] if p.exists() else []


def test_order_injection_skip_and_force(repo: Path) -> None:
    code, text = run(repo)
    assert code == 0, text
    assert [r["label"] for r in trace(repo)] == ["first", "many-x", "many-y", "last"]
    # profile-wide n=2, overridden per run; the profile name is injected because the notebook declares it
    assert [r["n"] for r in trace(repo)] == [2, 2, 7, 2]
    assert {r["profile"] for r in trace(repo)} == {"demo"}
    nbs = sorted(p.name for p in (repo / "results" / "demo" / "notebooks").iterdir())
    assert nbs == ["first.ipynb", "last.ipynb", "many__x.ipynb", "many__y.ipynb"]
    executed = nbformat.read(repo / "results/demo/notebooks/many__y.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "n = 7" in injected[0].source
    # live output went to the console stream and to the per-run log
    assert "echo many-y n=7 profile=demo" in text
    assert "echo many-y n=7" in (repo / "results/demo/logs/many__y.log").read_text()
    assert "step" in text and "status" in text  # summary table header
    # where each run's time went (issue 18): the parts sum to the run's time, here all kernel and untagged cells
    state = json.loads((repo / "results/demo/.runner/state.json").read_text())
    for key, entry in state.items():
        assert set(entry["breakdown"]) <= {"kernel", "other"}, key
        assert sum(entry["breakdown"].values()) == pytest.approx(entry["seconds"], abs=0.05), key
    assert "where the time went" in text and "all runs: kernel" in text

    code, text = run(repo)
    assert code == 0
    assert len(trace(repo)) == 4, "unchanged runs must be skipped"
    assert text.count("skipped") >= 4

    # a changed declared input reruns only the runs that declare it
    (repo / "data" / "input.txt").write_text("v2")
    code, _ = run(repo)
    assert [r["label"] for r in trace(repo)[4:]] == ["many-x", "many-y"]

    code, _ = run(repo, force=True)
    assert len(trace(repo)) == 10


def test_inputs_written_by_an_earlier_step_are_fingerprinted_after_it(repo: Path) -> None:
    """A step whose input is produced by an earlier step in the same invocation is skipped next time."""
    (repo / "params" / "demo.yaml").write_text(
        "steps:\n"
        "  - {name: make, notebook: notebooks/echo.ipynb, parameters: {out_file: out/made.json},\n"
        "     outputs: [out/made.json]}\n"
        "  - {name: use, notebook: notebooks/echo.ipynb, parameters: {out_file: out/used.json},\n"
        "     inputs: [out/made.json]}\n"
    )
    assert run(repo)[0] == 0
    code, text = run(repo)
    assert code == 0 and text.count("skipped (notebook, parameters and inputs unchanged)") == 2, text


def test_changed_parameter_and_missing_output_rerun(repo: Path) -> None:
    assert run(repo, only="first")[0] == 0
    assert len(trace(repo)) == 1
    assert run(repo, only="first")[0] == 0
    assert len(trace(repo)) == 1
    prof = repo / "params" / "demo.yaml"
    prof.write_text(PROFILE.replace("label: first,", "label: first2,"))
    assert run(repo, only="first")[0] == 0
    assert trace(repo)[-1]["label"] == "first2"
    # deleting a declared output forces a rerun even with identical inputs
    (repo / "out" / "trace.json").unlink()
    assert run(repo, only="first")[0] == 0
    assert [r["label"] for r in trace(repo)] == ["first2"]


def test_only_and_from(repo: Path) -> None:
    assert run(repo, only="many:y")[0] == 0
    assert [r["label"] for r in trace(repo)] == ["many-y"]
    assert run(repo, start_from="many", force=True)[0] == 0
    assert [r["label"] for r in trace(repo)] == ["many-y", "many-x", "many-y", "last"]
    code, _ = run(repo, only="nope")
    assert code == 2


def test_dry_run_executes_nothing(repo: Path) -> None:
    code, text = run(repo, dry_run=True)
    assert code == 0
    assert trace(repo) == []
    assert "[4/4] last" in text and "run" in text


def test_failure_reports_cell_and_keeps_partial_notebook(repo: Path) -> None:
    (repo / "params" / "demo.yaml").write_text(
        "steps:\n"
        "  - {name: ok, notebook: notebooks/echo.ipynb, parameters: {out_file: out/trace.json}}\n"
        "  - {name: bad, notebook: notebooks/fail.ipynb, parameters: {message: kaputt}}\n"
        "  - {name: after, notebook: notebooks/echo.ipynb, parameters: {label: after, out_file: out/trace.json}}\n"
    )
    code, text = run(repo)
    assert code == 1
    assert "bad: FAILED" in text
    assert "notebooks/fail.ipynb: cell" in text and "ValueError: kaputt" in text
    partial = repo / "results/demo/notebooks/bad.ipynb"
    assert partial.exists()
    cells = nbformat.read(partial, as_version=4).cells
    printed = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "before the failure" in printed and "never reached" not in printed
    assert len(trace(repo)) == 1, "the step after a failure must not run"
    assert "not run" in text
    # the failed step is not recorded as done: the next invocation retries it (and the ok step is skipped)
    code, text = run(repo)
    assert code == 1 and "[1/3] ok: skipped" in text


@pytest.mark.parametrize(
    "content, needle",
    [
        ("steps: [\n  - name: a\n", "malformed YAML"),
        ("steps:\n  - {name: a, notebook: notebooks/missing.ipynb}\n", "notebook not found"),
        ("steps:\n  - {name: a, notebook: notebooks/echo.ipynb, parameters: {bogus: 1}}\n", "does not declare"),
        ("steps:\n  - {name: a, notebook: notebooks/noparams.ipynb}\n", "no cell tagged 'parameters'"),
        ("steps:\n  - {name: a, notebook: notebooks/echo.ipynb, colour: red}\n", "unknown key"),
        ("steps: []\n", "non-empty list"),
    ],
)
def test_bad_input_gives_one_clear_line(repo: Path, content: str, needle: str, capsys) -> None:
    (repo / "params" / "demo.yaml").write_text(content)
    code, _ = run(repo)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert "demo.yaml" in err[0] or ".ipynb" in err[0]


def test_unknown_profile_via_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "emolib", "run", "does-not-exist", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "does-not-exist: no such profile file" in proc.stderr


def test_profile_expansion_keys(repo: Path) -> None:
    prof = load_profile("demo", repo)
    assert [r.key for r in prof.runs] == ["first", "many:x", "many:y", "last"]
    assert prof.steps == ["first", "many", "last"]
    (repo / "params" / "demo.yaml").write_text(PROFILE + "  - {name: first, notebook: notebooks/echo.ipynb}\n")
    with pytest.raises(ProfileError, match="duplicate run name"):
        load_profile("demo", repo)


def test_paths_take_run_parameters(repo: Path) -> None:
    (repo / "params" / "demo.yaml").write_text(
        "steps:\n"
        "  - name: s\n"
        "    notebook: notebooks/echo.ipynb\n"
        "    outputs: ['out/{label}.json']\n"
        "    inputs: ['data/{profile}-{label}.txt']\n"
        "    runs: [{id: a, label: a, out_file: out/a.json}, {id: b, label: b, out_file: out/b.json}]\n"
    )
    prof = load_profile("demo", repo)
    assert [r.outputs[0].name for r in prof.runs] == ["a.json", "b.json"]
    assert [r.inputs[0].name for r in prof.runs] == ["demo-a.txt", "demo-b.txt"]
    assert run(repo)[0] == 0
    (repo / "params" / "demo.yaml").write_text(
        "steps:\n  - {name: s, notebook: notebooks/echo.ipynb, outputs: ['out/{nope}.json']}\n")
    with pytest.raises(ProfileError, match="cannot fill"):
        load_profile("demo", repo)


PROFILES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profiles_are_valid(profile: str) -> None:
    """Every profile in params/ loads, names existing notebooks and only parameters they declare."""
    from emolib.pipeline.runner import check_runs

    root = Path(__file__).resolve().parents[1]
    prof = load_profile(profile, root)
    assert prof.name == profile
    check_runs(prof.runs)
    tables = [r for r in prof.runs if r.notebook.name.startswith("06_")]
    assert tables and prof.runs[-1] == tables[-1], "the tables notebook runs last"


# ------------------------------------------------------------------------------------- --set and --rehearse


def test_set_overrides_declared_parameters_and_refuses_unknown_keys(capsys) -> None:
    from emolib.pipeline.overrides import Adjuster, parse_overrides
    from emolib.pipeline.profile import load_profile

    assert parse_overrides(["epochs=1", "fv2es.lr=1e-5", "seeds=[0, 1]", "text_model=minilm"]) == [
        (None, "epochs", 1), ("fv2es", "lr", 1e-05), (None, "seeds", [0, 1]), (None, "text_model", "minilm")]
    root = Path(__file__).resolve().parents[1]
    adjuster = Adjuster(["epochs=1", "fv2es.lr=0.1"])
    profile = load_profile("iemocap", root, adjust=adjuster)
    adjuster.check()
    runs = {r.key: r.parameters for r in profile.runs}
    assert all(p["epochs"] == 1 for k, p in runs.items() if k.startswith(("baselines", "fv2es")))
    assert runs["fv2es:paper"]["lr"] == 0.1 and runs["baselines:audio"]["lr"] == 5e-05
    assert "epochs" not in runs["data"]  # notebook 01 declares no epochs: untouched
    # an overridden value changes the fingerprint, so the step reruns
    plain = {r.key: r for r in load_profile("iemocap", root).runs}
    assert plain["fv2es:paper"].parameters["lr"] != runs["fv2es:paper"]["lr"]
    # bad keys: one error line, exit 2, nothing runs
    assert run_profile("iemocap", root=root, overrides=["nosuch=1"], dry_run=True) == 2
    assert "no notebook of any step declares the parameter 'nosuch'" in capsys.readouterr().err
    assert run_profile("iemocap", root=root, overrides=["nostep.lr=1"], dry_run=True) == 2
    assert "has no step 'nostep'" in capsys.readouterr().err
    assert run_profile("iemocap", root=root, overrides=["data.lr=1"], dry_run=True) == 2
    assert run_profile("iemocap", root=root, overrides=["oops"], dry_run=True) == 2
    out = io.StringIO()
    assert run_profile("iemocap", root=root, overrides=["epochs=1"], dry_run=True, out=out) == 0


def test_rehearsal_rewrites_the_paper_profile() -> None:
    from emolib.pipeline.overrides import REHEARSAL_EPOCHS, REHEARSAL_STEPS, Adjuster
    from emolib.pipeline.profile import load_profile

    root = Path(__file__).resolve().parents[1]
    for name in ("iemocap", "mosei", "sims"):
        real = {r.key: r.parameters for r in load_profile(name, root).runs}
        profile = load_profile(name, root, adjust=Adjuster(rehearse=True), name_suffix="-rehearsal")
        assert profile.name == f"{name}-rehearsal"
        for run in profile.runs:
            p, orig = run.parameters, real[run.key]
            assert p["profile"] == f"{name}-rehearsal"
            if "source_root" in orig:
                assert p["source_root"] == "" and p["synth_size"] == "tiny"
            if "epochs" in orig:
                assert p["epochs"] == REHEARSAL_EPOCHS and p["max_steps_per_epoch"] == REHEARSAL_STEPS
                assert p["seeds"] == [0]
                # paper-size models and the profile's batch size and learning rate are kept
                assert p["model_config"] == "paper" and p["batch_size"] == orig["batch_size"]
                assert p.get("lr") == orig.get("lr")
            if orig.get("text_model") in ("albert-base-v2", "bert-base-chinese"):
                assert p["text_model"] == "stand-in:" + orig["text_model"]
            for out in run.outputs:
                assert f"results/{name}-rehearsal/" in str(out)  # never the real results folder
            assert not p.get("split_dir") and not p.get("folds")
        tables = next(r for r in profile.runs if r.step == "tables")
        assert tables.parameters["rehearsal"] is True


def test_stage_seconds_from_tagged_cells(tmp_path: Path) -> None:
    from emolib.pipeline.runner import STAGES, format_breakdown, stage_seconds

    nb = nbformat.v4.new_notebook()
    for seconds, tags in ((0.5, ["parameters"]), (2.0, ["stage:prepare"]), (3.0, ["stage:train"]),
                          (1.0, ["stage:train", "other-tag"]), (0.25, []), (0.5, ["stage:unknown"])):
        cell = nbformat.v4.new_code_cell("pass")
        cell.metadata.update(tags=tags, papermill={"duration": seconds})
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_markdown_cell("text"))
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    parts = stage_seconds(path, wall=10.0)
    assert parts == {"kernel": 2.75, "prepare": 2.0, "train": 4.0, "other": 1.25}
    assert list(parts) == [k for k in ("kernel", *STAGES, "other") if k in parts]
    assert format_breakdown(parts) == "kernel 2.8s, prepare 2.0s, train 4.0s, other 1.2s"
    assert stage_seconds(tmp_path / "missing.ipynb", wall=1.5) == {"kernel": 1.5}


def test_every_stage_tag_in_the_notebooks_is_known() -> None:
    from emolib.pipeline.runner import STAGES

    root = Path(__file__).resolve().parents[1] / "notebooks"
    seen = set()
    for path in sorted(root.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            seen |= {t.split(":", 1)[1] for t in cell.metadata.get("tags", []) if t.startswith("stage:")}
    assert seen == set(STAGES)


def test_hardware_names_the_cpu_beyond_its_model_name() -> None:
    """Two VMs both reporting "AMD EPYC" ran the smoke 2x apart: the record keeps family, model and vector unit."""
    from emolib.bench.common import cpuinfo

    zen5 = ("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu sse2 avx avx2 avx512f\n\nprocessor\t: 1\ncpu family\t: 99\nmodel name\t: other\n")
    assert cpuinfo(zen5) == {"cpu": "AMD EPYC", "cpu_family": "26", "cpu_model": "2", "cpu_vector": "avx512f"}
    zen3 = "cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2\n"
    assert cpuinfo(zen3)["cpu_vector"] == "avx2" and cpuinfo(zen3)["cpu_family"] == "25"
    assert cpuinfo("") == {"cpu": "", "cpu_family": None, "cpu_model": None, "cpu_vector": None}


def test_profile_benchmark_times_a_profile_from_scratch(repo: Path, tmp_path: Path) -> None:
    """emolib run --bench on a one-step profile: fresh folder per repeat, breakdown kept, median and spread."""
    from emolib.pipeline.benchmark import bench_profile

    (repo / "params" / "one.yaml").write_text(
        "name: one\nsteps:\n  - {name: s, notebook: notebooks/echo.ipynb, parameters: {label: a, "
        "out_file: out/t.json}}\n")
    console = io.StringIO()
    kept = tmp_path / "kept"
    result = bench_profile(tmp_path / "work", "one", repeats=2, root=repo, out=console, keep=kept)
    assert "one: repeat 2 of 2" in console.getvalue() and "where the time went" in console.getvalue()
    assert len(result["repeats"]) == 2 and result["median_s"] > 0 and result["profile"] == "one"
    assert result["spread_s"] == [min(result["wall_s"]), max(result["wall_s"])]
    for rep in result["repeats"]:
        assert list(rep["runs"]) == ["s"] and rep["runs"]["s"]["seconds"] <= rep["wall_s"]
        assert sum(rep["stages"].values()) == pytest.approx(rep["runs"]["s"]["seconds"], abs=0.05)
    assert result["target_met"] == (result["median_s"] <= result["target_s"]) and result["hardware"]["cpu_count"]
    assert not (repo / "results" / "one").exists()  # the repository's own results are not touched
    # the last repeat's folder is kept where asked, the others are gone
    assert (kept / "params" / "one.yaml").is_file() and (kept / "results" / "one" / ".runner" / "state.json").is_file()
    assert not list((tmp_path / "work").glob("repeat-*"))
    with pytest.raises(ValueError, match="absent or empty"):
        bench_profile(tmp_path / "w3", "one", repeats=1, root=repo, keep=kept)
    with pytest.raises(ValueError, match="repeats"):
        bench_profile(tmp_path / "w2", "one", repeats=0, root=repo)
    assert result["overrides"] == []


def test_profile_benchmark_applies_overrides_and_records_them(repo: Path, tmp_path: Path) -> None:
    """--bench --set: every repeat runs the changed profile, the record lists the overrides and goes beside the
    profile's own record; an override that no run takes fails before the first repeat."""
    import json

    from emolib.pipeline.benchmark import bench_path, bench_profile
    from emolib.pipeline.profile import ProfileError

    (repo / "params" / "one.yaml").write_text(
        "name: one\nsteps:\n  - {name: s, notebook: notebooks/echo.ipynb, parameters: {label: a, "
        "out_file: out/t.json}}\n")
    kept = tmp_path / "kept"
    result = bench_profile(tmp_path / "work", "one", repeats=1, root=repo, keep=kept, overrides=["s.n=5"])
    assert result["overrides"] == ["s.n=5"]
    assert json.loads((kept / "out" / "t.json").read_text())["runs"] == [{"label": "a", "n": 5, "profile": "one"}]
    assert bench_path(tmp_path, "one", result["overrides"]) == tmp_path / "one-set.json"
    assert bench_path(tmp_path, "one") == tmp_path / "one.json"
    with pytest.raises(ProfileError, match="nope"):
        bench_profile(tmp_path / "w4", "one", repeats=1, root=repo, overrides=["nope=1"])
    assert not (tmp_path / "w4").exists()


@pytest.mark.parametrize("flag", [["--only", "s"], ["--force"], ["--rehearse"], ["--dry-run"]])
def test_cli_bench_refuses_options_it_cannot_honour(repo: Path, flag: list[str], capsys) -> None:
    from emolib.cli import main

    assert main(["run", str(repo / "params" / "demo.yaml"), "--bench", "1", *flag]) != 0
    err = capsys.readouterr().err
    assert flag[0] in err and "--bench" in err


CONCURRENT = """
name: par
jobs: 2
steps:
  - name: make
    notebook: notebooks/timed.ipynb
    outputs: ['times/{label}.json']
    runs:
      # make:a outlasts make:b plus use:b's kernel start with seconds to spare on a loaded CI machine
      - {id: a, label: a, seconds: 5}
      - {id: b, label: b, seconds: 0.2}
  - name: use
    notebook: notebooks/timed.ipynb
    inputs: ['times/{src}.json']
    runs:
      - {id: b, label: use-b, src: b, record: 'results/par/runs/m/d/p/seed=0.json'}
  - name: all
    notebook: notebooks/timed.ipynb
    parameters: {label: all}
    inputs: [results/par/runs]
"""


def test_dependencies_follow_declared_inputs_and_outputs(tmp_path: Path) -> None:
    from emolib.pipeline.runner import dependencies, results_dir

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "par.yaml").write_text(CONCURRENT)
    profile = load_profile("par", tmp_path)
    deps = dependencies(profile.runs, results_dir(profile))
    # use:b reads what make:b writes, not make:a; "all" reads the results folder no run declares: waits for all
    assert deps == {"make:a": set(), "make:b": set(), "use:b": {"make:b"}, "all": {"make:a", "make:b", "use:b"}}


def test_runs_at_a_time_start_when_their_inputs_are_written(tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(FIXTURES, tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "par.yaml").write_text(CONCURRENT)
    out = io.StringIO()
    # The working directory is process-wide. Papermill's `cwd` moved the process into the root while its file
    # handler moved it back to the caller's folder around every notebook save; with two runs at a time a kernel
    # could start in the caller's folder (CI once lost times/a.json that way). Kernels now get their folder, and
    # the process only ever "moves" to where it already is (the file handler's own chdir).
    cwd, chdirs, chdir = os.getcwd(), [], os.chdir
    monkeypatch.setattr(os, "chdir", lambda p: (chdirs.append(str(p)), chdir(p)))
    assert run_profile("par", root=tmp_path, out=out) == 0, out.getvalue()
    assert set(chdirs) <= {cwd} and os.getcwd() == cwd
    t = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "times").glob("*.json")}
    assert {v["cwd"] for v in t.values()} == {str(tmp_path.resolve())}  # every kernel ran in the profile's root
    assert t["b"]["start"] < t["a"]["end"] and t["a"]["start"] < t["b"]["end"]  # make:a and make:b overlapped
    assert t["use-b"]["start"] >= t["b"]["end"] and t["use-b"]["start"] < t["a"]["end"]  # started before a ended
    assert t["all"]["start"] >= max(t["a"]["end"], t["use-b"]["end"])  # the results-folder reader waits for all
    assert len({v["pid"] for v in t.values()}) == 4  # a kernel per run
    # two runs at a time on the cores this process may use: each kernel gets its share as its thread count
    cores = len(os.sched_getaffinity(0))
    share = os.environ.get("OMP_NUM_THREADS", str(max(1, cores // 2)))
    assert {k: v["omp"] for k, v in t.items() if k != "all"} == {"a": share, "b": share, "use-b": share}
    # the last run has the machine to itself (everything else is done or waits for it): it keeps every core
    assert t["all"]["omp"] == os.environ.get("OMP_NUM_THREADS")
    text = out.getvalue()
    assert "2 runs at a time" in text
    assert "[make:a] timed a done" in text and "[make:b] timed b done" in text  # console lines carry the run
    state = json.loads((tmp_path / "results" / "par" / ".runner" / "state.json").read_text())
    assert state["use:b"]["records"] == ["runs/m/d/p/seed=0.json"] and state["make:a"]["records"] == []
    # one at a time on request: runs never overlap
    out = io.StringIO()
    assert run_profile("par", root=tmp_path, out=out, force=True, jobs=1) == 0
    t = sorted((json.loads(p.read_text()) for p in (tmp_path / "times").glob("*.json")), key=lambda v: v["start"])
    assert all(x["end"] <= y["start"] for x, y in zip(t, t[1:]))
    assert "runs at a time" not in out.getvalue()


def test_a_failure_lets_running_runs_finish_and_starts_nothing_new(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "par.yaml").write_text("""
name: par
jobs: 2
steps:
  - {name: bad, notebook: notebooks/fail.ipynb}
  - {name: slow, notebook: notebooks/timed.ipynb, parameters: {label: slow, seconds: 5}}  # outlasts bad's failure
  - {name: later, notebook: notebooks/timed.ipynb, parameters: {label: later}}
""")
    out = io.StringIO()
    assert run_profile("par", root=tmp_path, out=out) == 1
    assert (tmp_path / "times" / "slow.json").exists() and not (tmp_path / "times" / "later.json").exists()
    summary = out.getvalue()
    assert "bad: FAILED" in summary and "[3/3] later" not in summary
    assert any(line.startswith("later") and "not run" in line for line in summary.splitlines())


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_bad_jobs_value_is_one_clear_error(tmp_path: Path, value, capsys) -> None:
    (tmp_path / "params").mkdir()
    steps = "steps:\n  - {name: s, notebook: x.ipynb}\n"
    (tmp_path / "params" / "p.yaml").write_text(f"jobs: {json.dumps(value)}\n{steps}")
    assert run_profile("p", root=tmp_path, out=io.StringIO()) == 2
    assert "jobs: must be a whole number >= 1 or 'auto'" in capsys.readouterr().err


def test_write_record_notes_its_path_where_the_runner_asks(tmp_path: Path, monkeypatch) -> None:
    from test_records import make_record

    from emolib.records import RECORD_LOG_ENV, record_path, write_record

    log = tmp_path / "written.txt"
    monkeypatch.setenv(RECORD_LOG_ENV, str(log))
    paths = [record_path(tmp_path, "p", "fe2e", "iemocap", "dai-iemocap", s) for s in (0, 1)]
    for s, path in enumerate(paths):
        write_record(path, make_record(s))
    assert log.read_text().splitlines() == [str(p.resolve()) for p in paths]


def test_the_kernel_is_stopped_once_the_last_cell_replied(tmp_path: Path) -> None:
    """The runner kills a run's kernel when its notebook is done instead of asking it to exit (2-3 s a run with torch
    and transformers loaded): what the cells wrote is there, what the interpreter would do at exit is not."""
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(metadata=nbformat.read(FIXTURES / "timed.ipynb", as_version=4).metadata)
    nb.cells = [nbformat.v4.new_code_cell("profile = ''", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(
        "import atexit, pathlib, time\n"
        "pathlib.Path('written.txt').write_text('by the cell')\n"
        "atexit.register(lambda: (time.sleep(1), pathlib.Path('at_exit.txt').write_text('teardown')))")]
    nbformat.write(nb, tmp_path / "notebooks" / "exit.ipynb")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.yaml").write_text(
        "name: p\nsteps:\n  - {name: s, notebook: notebooks/exit.ipynb, outputs: [written.txt]}\n")
    out = io.StringIO()
    assert run_profile("p", root=tmp_path, out=out) == 0, out.getvalue()
    assert (tmp_path / "written.txt").read_text() == "by the cell"
    assert not (tmp_path / "at_exit.txt").exists()
