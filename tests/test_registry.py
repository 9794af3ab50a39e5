"""Registry consistency: everything registered is listed by the CLI, documented in the README and exercised by a
test (recorded during the session; see tests/registry_coverage.py)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import registry_coverage

from emolib import registry
from emolib.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_register_rejects_bad_entries() -> None:
    reg = registry.Registry()
    with pytest.raises(ValueError, match="unknown registry kind"):
        reg.register("widget", "x", object(), summary="s")
    with pytest.raises(ValueError, match="needs a summary"):
        reg.register("model", "nodoc", lambda: None)

    def f():
        """First line."""

    reg.register("model", "f", f)
    assert reg._entries[("model", "f")].summary == "First line."

    def g():
        """Other."""

    with pytest.raises(ValueError, match="already registered"):
        reg.register("model", "f", g)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(KeyError, match="unknown model 'no-such-model'"):
        registry.get("model", "no-such-model")


def test_cli_lists_every_entry() -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["list"]) == 0
    text = buf.getvalue()
    for e in registry.entries():
        assert e.name in text


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(registry.README_BEGIN) + len(registry.README_BEGIN)
    end = readme.index(registry.README_END)
    assert readme[start:end].strip() == registry.markdown().strip(), (
        "README registry table is stale: run `emolib list --markdown` and paste it between the markers"
    )


# --- registry coverage (tests/registry_coverage.py, wired up in conftest.py) ---------------------------------
# That every entry is exercised is checked at the end of a full default run (conftest.pytest_sessionfinish),
# from the lookups recorded during the session; these tests check the recording and the checking function.


def test_unexercised_reports_each_entry_that_was_never_looked_up() -> None:
    entries = [registry.Entry("model", "fe2e", object, "s", "m"), registry.Entry("loss", "bce", object, "s", "m"),
               ("protocol", "sims"), ("dataset", "mosei")]
    missing = registry_coverage.unexercised({("model", "fe2e"), ("protocol", "sims"), ("model", "gone")}, entries)
    assert len(missing) == 2
    assert "loss 'bce'" in missing[0] and "dataset 'mosei'" in missing[1]
    assert all(line.startswith("registry coverage: ") and "\n" not in line for line in missing)
    assert registry_coverage.unexercised({("loss", "bce"), ("dataset", "mosei")}, entries[1:2] + entries[3:]) == []
    assert registry_coverage.unexercised(set(), []) == []
    # the kind is part of the key: a loss named like a model does not cover the model
    assert len(registry_coverage.unexercised({("loss", "fe2e")}, entries[:1])) == 1


@pytest.fixture
def restore_used():
    """Lookups made here only to test the recording must not count as exercising the entries."""
    before = set(registry_coverage.USED)
    yield
    registry_coverage.USED.intersection_update(before)


def test_lookups_are_recorded_and_listings_are_not(restore_used) -> None:
    kind, name = "loss", "bce"
    registry_coverage.USED.discard((kind, name))
    assert registry.REGISTRY.entries() and registry.REGISTRY.names(kind) and registry.as_table() and registry.markdown()
    main_out = io.StringIO()
    with redirect_stdout(main_out):
        main(["list"])
    assert all(isinstance(e, registry.Entry) for e in registry.entries())
    assert (kind, name) not in registry_coverage.USED, "listing the registry must not count as using an entry"
    with pytest.raises(KeyError):
        registry.get(kind, "no-such-loss")
    assert not any(n == "no-such-loss" for _, n in registry_coverage.USED)
    own = registry.Registry()  # lookups on another registry are not lookups of emolib's entries
    own.register(kind, name, lambda: None, summary="s")
    own.get(kind, name)
    assert (kind, name) not in registry_coverage.USED
    registry.get(kind, name)  # the module-level alias
    assert (kind, name) in registry_coverage.USED
    registry_coverage.USED.discard((kind, name))
    registry.REGISTRY.entry(kind, name)
    assert (kind, name) in registry_coverage.USED


def _config(*args: str, **options):
    """A stand-in for pytest.Config with what partial_run_reason reads."""
    defaults = {"keyword": "", "deselect": [], "ignore": [], "ignore_glob": [], "lf": False, "stepwise": False,
                "collectonly": False}
    source = SimpleNamespace(name="ARGS" if args else "TESTPATHS")
    return SimpleNamespace(option=SimpleNamespace(**{**defaults, **options}), args=list(args) or ["tests"],
                           args_source=source, rootpath=ROOT, invocation_params=SimpleNamespace(dir=ROOT),
                           getini=lambda name: ["tests"] if name == "testpaths" else None)


def test_the_check_runs_only_after_the_full_default_selection() -> None:
    reason = registry_coverage.partial_run_reason
    assert reason(_config()) is None
    assert reason(_config("tests")) is None and reason(_config(str(ROOT / "tests") + "/")) is None
    assert reason(_config(), deselected_default=0) is None  # -m 'not slow' deselects slow tests only
    assert "explicit test paths" in reason(_config("tests/test_registry.py"))
    assert "explicit test paths" in reason(_config("tests", "tests/test_registry.py::test_readme_table_is_current"))
    assert reason(_config(keyword="registry")) == "-k"
    assert reason(_config(deselect=["tests/test_registry.py::x"])) == "--deselect"
    assert reason(_config(ignore=["tests/test_media.py"])) == "--ignore"
    assert reason(_config(lf=True)) == "--last-failed/--stepwise"
    assert reason(_config(collectonly=True)) == "--collect-only"
    assert "deselected" in reason(_config(), deselected_default=3)  # -m integration, plugins, ...
    assert reason(_config(), collection_errors=1) == "collection errors"
    assert "stopped early" in reason(_config(), stopped_early=True)
    assert reason(_config(), tests_collected=0) == "no tests collected"
    # pytest-xdist: a worker never checks; the controller checks once its workers have reported their lookups
    worker = _config()
    worker.workerinput = {"workerid": "gw0"}
    assert "xdist worker" in reason(worker, workers_reported=True)
    assert "no worker reported" in reason(_config(numprocesses=2))
    assert reason(_config(numprocesses=2), workers_reported=True) is None


def test_models_that_need_no_timm_do_not_import_it() -> None:
    """timm (~1.7 s to import, with torchvision) is imported by building FV2ES's NesT encoder or EmoMBT's
    EfficientNet only, so a notebook kernel that trains E2EMAL or a unimodal baseline starts without it."""
    import subprocess
    import sys

    code = ("import sys; from emolib.models import build_model, model_config\n"
            "for name in ('e2emal', 'audio-only', 'visual-only'): build_model(name, 'tiny', num_outputs=6)\n"
            "assert model_config('fv2es', 'paper').nest_depths == (2, 2, 20)\n"
            "print('timm' in sys.modules)\n"
            "build_model('fv2es', 'tiny', num_outputs=6); print('timm' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
