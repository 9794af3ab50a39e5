"""Registry coverage: which entries of ``emolib.registry.REGISTRY`` the test session really looked up.

conftest.py calls ``install`` in ``pytest_configure``: from then on every successful ``REGISTRY.entry`` or
``REGISTRY.get`` (``get`` goes through ``entry``; ``emolib.registry.get`` is ``REGISTRY.get``) adds the entry's
``(kind, name)`` to ``USED``. Listing the registry (``entries()``, ``names()``, ``as_table()``, ``markdown()``)
reads the entries without calling ``entry``, so it does not count; neither do lookups on other ``Registry``
instances (unit tests build their own) nor lookups in subprocesses (notebook kernels, DataLoader workers).

At the end of a run of the full default selection ``pytest_sessionfinish`` fails the session for every entry
in ``unexercised(USED, REGISTRY.entries())``; ``partial_run_reason`` tells a full run from a partial one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

USED: set[tuple[str, str]] = set()

# The marker that the default selection (pyproject addopts: -m 'not slow') leaves out. A run that deselects
# only tests with this marker still runs everything the default selection runs.
DEFAULT_EXCLUDED_MARKER = "slow"


def install(registry_module: Any) -> Callable[[], None]:
    """Record the lookups of ``registry_module.REGISTRY`` into ``USED``; returns the function that undoes it."""
    cls = registry_module.Registry
    original_entry, original_get = cls.__dict__["entry"], cls.__dict__["get"]
    original_alias = registry_module.__dict__.get("get")

    def entry(self, kind: str, name: str):
        found = original_entry(self, kind, name)
        if self is registry_module.REGISTRY:
            USED.add((found.kind, found.name))
        return found

    def get(self, kind: str, name: str):
        obj = original_get(self, kind, name)
        if self is registry_module.REGISTRY:
            USED.add((kind, name))
        return obj

    entry.__wrapped__, get.__wrapped__ = original_entry, original_get
    cls.entry, cls.get = entry, get
    # ``emolib.registry.get`` is the bound method REGISTRY.get taken at import time: rebind it to the wrapper.
    if getattr(original_alias, "__self__", None) is registry_module.REGISTRY:
        registry_module.get = registry_module.REGISTRY.get

    def uninstall() -> None:
        cls.entry, cls.get = original_entry, original_get
        if original_alias is not None:
            registry_module.get = original_alias

    return uninstall


def unexercised(used: Collection[tuple[str, str]], entries: Iterable[Any]) -> list[str]:
    """One line per entry (an object with ``kind`` and ``name``, or a ``(kind, name)`` pair) not in ``used``."""
    lines = []
    for e in entries:
        kind, name = (e.kind, e.name) if hasattr(e, "kind") else e
        if (kind, name) not in used:
            lines.append(f"registry coverage: {kind} {name!r} is registered but no test looked it up "
                         f"(REGISTRY.get/entry); add a test that builds or uses it")
    return lines


def partial_run_reason(config: Any, *, deselected_default: int = 0, collection_errors: int = 0,
                       stopped_early: bool = False, tests_collected: int = 1,
                       workers_reported: bool = False) -> str | None:
    """Why this session did not run the full default selection, or None when it did.

    ``deselected_default`` counts deselected tests that the default selection runs (no ``slow`` marker), which
    covers -m, -k, --deselect, --last-failed and plugins alike. Under pytest-xdist the lookups happen in the
    workers: only the controller, once the workers have reported (``workers_reported``), can check them."""
    opt = config.option
    if getattr(config, "workerinput", None) is not None:
        return "xdist worker: the controller checks the workers' lookups together"
    if getattr(opt, "numprocesses", None) and not workers_reported:
        return "xdist: no worker reported its lookups"
    if getattr(opt, "collectonly", False):
        return "--collect-only"
    if getattr(opt, "keyword", ""):
        return "-k"
    if getattr(opt, "deselect", None):
        return "--deselect"
    if getattr(opt, "ignore", None) or getattr(opt, "ignore_glob", None):
        return "--ignore"
    if getattr(opt, "lf", False) or getattr(opt, "stepwise", False) or getattr(opt, "stepwise_skip", False):
        return "--last-failed/--stepwise"
    if not _runs_the_testpaths(config):
        return "explicit test paths: " + " ".join(map(str, config.args))
    if deselected_default:
        return f"{deselected_default} test(s) of the default selection deselected"
    if collection_errors:
        return "collection errors"
    if stopped_early:
        return "stopped early (-x/--maxfail)"
    if not tests_collected:
        return "no tests collected"
    return None


def _runs_the_testpaths(config: Any) -> bool:
    source = getattr(config, "args_source", None)
    if source is not None and source.name == "TESTPATHS":
        return True
    testpaths = config.getini("testpaths")
    if not testpaths:
        return False
    root, invocation = Path(config.rootpath), Path(config.invocation_params.dir)
    given = {(invocation / a).resolve() for a in config.args}
    return given == {(root / t).resolve() for t in testpaths}
