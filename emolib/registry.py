"""One registry for everything the package can enumerate: datasets, models, losses and metric protocols.

Modules register their objects with the ``register`` decorator at import time. ``load_all()`` imports the
provider packages so that the CLI (``emolib list``), the README check and the consistency tests all see the
same list; there is no second list anywhere.

    @register("protocol", "dai-iemocap")
    class DaiIemocap(ClassificationProtocol): ...

An entry's details (``meta``) are read from the registered class itself: a class that defines the classmethod
``registry_meta()`` returns them (a protocol its task, headline metrics and paper; a dataset its task, classes
and protocols; a model its configurations), so a fact is stated once, on the class. Keyword arguments of
``register`` add details that the class does not hold (e.g. a dataset's download route).
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("dataset", "model", "loss", "protocol")

# Packages whose import registers entries, per kind (a lookup imports only its kind's package: a dataset lookup
# never pays for torch and transformers). Adding a provider module means importing it from one of these.
_PROVIDERS = {"dataset": "emolib.data", "protocol": "emolib.metrics", "model": "emolib.models",
              "loss": "emolib.losses"}
# ``emolib list`` reads this generated copy of ``as_table()`` so that it answers without importing torch;
# ``emolib list --update-readme`` rewrites it and a test checks that it is current.
INDEX_PATH = Path(__file__).with_name("registry_index.json")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    summary: str
    module: str
    meta: dict = field(default_factory=dict)


class Registry:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}

    def register(self, kind: str, name: str, obj: Any = None, *, summary: str | None = None, **meta: Any):
        """Register ``obj`` (or, used as a decorator, the decorated object) under ``kind``/``name``."""
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {', '.join(KINDS)}")

        def add(target: Any) -> Any:
            key = (kind, name)
            old = self._entries.get(key)
            module = getattr(target, "__module__", "") or ""
            if old is not None and (old.module, getattr(old.obj, "__qualname__", None)) != (
                module,
                getattr(target, "__qualname__", None),
            ):
                raise ValueError(f"{kind} {name!r} is already registered by {old.module}")
            derived = dict(target.registry_meta()) if callable(getattr(target, "registry_meta", None)) else {}
            clash = sorted(set(derived) & set(meta))
            if clash:
                raise ValueError(f"{kind} {name!r}: {clash} stated both on the class and in register()")
            derived_summary = derived.pop("summary", None)
            doc = summary or derived_summary or (inspect.getdoc(target) or "").strip().splitlines()[:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            if not text:
                raise ValueError(f"{kind} {name!r} needs a summary (argument or first docstring line)")
            self._entries[key] = Entry(kind, name, target, text, module, {**derived, **meta})
            return target

        return add if obj is None else add(obj)

    def entry(self, kind: str, name: str) -> Entry:
        load_all(kind)
        try:
            return self._entries[(kind, name)]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "none registered"
            raise KeyError(f"unknown {kind} {name!r}; registered: {choices}") from None

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def entries(self, kind: str | None = None) -> list[Entry]:
        load_all(kind)
        rows = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(rows, key=lambda e: (KINDS.index(e.kind), e.name))

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.entries(kind)]


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
entries = REGISTRY.entries
names = REGISTRY.names

_loaded: set[str] = set()


def load_all(kind: str | None = None) -> None:
    """Import the provider package of ``kind`` (None: every one) once so that its entries are registered."""
    for k in (kind,) if kind is not None else KINDS:
        if k in _loaded:
            continue
        _loaded.add(k)  # first: a provider's own lookups during its import must not re-enter
        try:
            importlib.import_module(_PROVIDERS[k])
        except BaseException:
            _loaded.discard(k)
            raise


def _detail(value: Any) -> str | None:
    """A metadata value as shown by ``emolib list -v``; None for values too rich for one line."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if callable(value) or isinstance(value, (dict, list, tuple)):
        return None
    return str(value)


def as_table(kind: str | None = None) -> list[dict[str, str]]:
    """Rows for printing: kind, name, summary and the metadata as ``key=value`` pairs."""
    return [
        {
            "kind": e.kind,
            "name": e.name,
            "summary": e.summary,
            "details": ", ".join(f"{k}={_detail(v)}" for k, v in sorted(e.meta.items())
                                 if _detail(v) is not None),
        }
        for e in entries(kind)
    ]


def read_index() -> list[dict[str, str]]:
    """The generated copy of ``as_table()`` (fast: no provider is imported)."""
    return json.loads(INDEX_PATH.read_text(encoding="utf-8"))


def write_index() -> bool:
    """Regenerate ``registry_index.json`` from the live registry; True when it changed."""
    text = json.dumps(as_table(), indent=1, ensure_ascii=False) + "\n"
    old = INDEX_PATH.read_text(encoding="utf-8") if INDEX_PATH.is_file() else None
    if text != old:
        INDEX_PATH.write_text(text, encoding="utf-8")
    return text != old


README_BEGIN = "<!-- registry:begin (generated by `emolib list --markdown`; tests check it) -->"
README_END = "<!-- registry:end -->"


def markdown() -> str:
    """The registry as the Markdown table that README.md carries between the registry markers."""
    lines = ["| kind | name | what it is |", "|---|---|---|"]
    lines += [f"| {r['kind']} | `{r['name']}` | {r['summary']} |" for r in as_table()]
    return "\n".join(lines)


def update_readme(path) -> bool:
    """Rewrite the generated table in README.md; returns True when it changed."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END)
    new = text[:start] + "\n" + markdown() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
