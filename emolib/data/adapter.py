"""What every dataset adapter offers: ``download``, ``verify``, ``sources`` and ``prepare``.

Adapters only know their raw layout: ``sources()`` lists the utterances as ``UtteranceSource`` objects and the
shared engine (``emolib.data.prepare``) builds the cache. The same code path serves the real release, a user's own
copy and the embedded synthetic copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from emolib.data.prepare import PrepareParams, PrepareReport, UtteranceSource, prepare_sources, with_defaults
from emolib.deviations import Deviation

PREPARE_RECIPES = ("emolib", "dai")


def problem_dicts(problems) -> list[dict[str, Any]]:
    """Format-parser problems (``LineProblem``) as JSON-ready dicts for the provenance."""
    return [{"file": p.path, "line": p.line, "problem": p.message} for p in problems]


def is_synthetic(root: Path) -> bool:
    """The synthetic generator marks its releases; verify() then skips the full-release counts."""
    from emolib.data.synthetic import MANIFEST_NAME

    return (Path(root) / MANIFEST_NAME).is_file()


def get_adapter(name: str) -> Adapter:
    from emolib.registry import get

    return get("dataset", name)()


class ProtocolUse(NamedTuple):
    """A metric protocol that applies to a dataset, and the role it plays there (shown in tables and records)."""

    protocol: str
    role: str


def dataset_protocols(dataset: str, task: str | None = None) -> tuple[ProtocolUse, ...]:
    """The protocols a registered dataset declares (primary first); ``task`` matters for own data only."""
    adapter = get_adapter(dataset)
    return adapter.protocols_for(task or adapter.task)


@dataclass
class VerifyReport:
    """Result of checking a raw copy: what is there, what is missing or wrong."""

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # kept with a counted fallback (e.g. an empty transcript)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems

    def summary(self) -> str:
        head = f"{self.root}: {'OK' if self.ok else 'PROBLEMS'} (" + ", ".join(
            f"{v} {k}" for k, v in self.counts.items()) + ")"
        lines = [head]
        lines += [f"  missing: {m}" for m in self.missing[:50]]
        if len(self.missing) > 50:
            lines.append(f"  ... {len(self.missing) - 50} more missing")
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... {len(self.problems) - 50} more problems")
        lines += [f"  note: {n}" for n in self.notes[:20]]
        if len(self.notes) > 20:
            lines.append(f"  ... {len(self.notes) - 20} more notes")
        return "\n".join(lines)


class Adapter:
    """Base class; subclasses set the class attributes and implement ``sources`` and ``verify``.

    The class attributes are the one place where a dataset's facts are stated: its ``title`` (as the papers'
    tables name it), ``task``, ``label_names`` (in the order of the model outputs) and ``protocols`` (the metric
    protocols that apply, the primary one first, each with its role). Metrics, tables, experiments and
    ``predict`` read them from here (``emolib.registry`` lists them too).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    task: ClassVar[str] = "multilabel"
    label_names: ClassVar[tuple[str, ...]]
    protocols: ClassVar[tuple[ProtocolUse, ...]]
    # How Dai et al. 2021 made the frames and faces that FE2E, FV2ES and the unimodal baselines trained on, as
    # PrepareParams values (empty: the dataset is not one of Dai's). prepare_params(recipe="dai") applies them.
    dai_prepare: ClassVar[dict[str, Any]] = {}
    # Differences every cache of emolib's recipe has, whatever the dataset; adapters add their own.
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("prepare.face_codec", "faces are stored as JPEG at face_quality (lossy, 10x smaller cache than "
                  "Dai's frame dump); Dai et al. keep the crops MTCNN makes exact", "emolib",
                  "jpeg (emolib) | raw (exact crops; the dai recipe)", "emolib.data.cache"),
        Deviation("prepare.min_face_size", "MTCNN's smallest face: the papers keep facenet-pytorch's 20 px; a larger "
                  "value skips the finest pyramid scales (faster; boxes move by a few pixels, smaller faces are "
                  "missed)", "paper", "20 (paper) | 60 (smoke profile: synthetic faces >= ~100 px)",
                  "emolib.data.prepare.PrepareParams"),
    )
    download_manifest: ClassVar[list[dict[str, Any]] | None] = None
    download_help: ClassVar[str] = ""

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        """What ``emolib list`` shows for the dataset, derived from the class attributes above."""
        meta: dict[str, Any] = {"task": cls.task, "protocols": ",".join(p.protocol for p in cls.protocols)}
        if getattr(cls, "label_names", ()):
            meta["classes"] = ",".join(cls.label_names)
        return meta

    def protocols_for(self, task: str) -> tuple[ProtocolUse, ...]:
        """The protocols for this dataset's caches of ``task`` (fixed per dataset except for own data)."""
        if task != self.task:
            raise ValueError(f"dataset {self.name!r} is a {self.task} dataset, not {task}")
        return self.protocols

    def prepare_params(self, recipe: str = "emolib", **overrides: Any) -> PrepareParams:
        """``PrepareParams`` of a recipe: "emolib" (whole frames, margin at the stored size, centre fallback) or
        "dai" (``dai_prepare``); keyword overrides win over both."""
        if recipe not in PREPARE_RECIPES:
            raise ValueError(f"recipe must be one of {PREPARE_RECIPES}, got {recipe!r}")
        if recipe == "dai" and not self.dai_prepare:
            raise ValueError(f"dataset {self.name!r} has no Dai et al. preprocessing recipe; use recipe='emolib'")
        return PrepareParams(**{**(self.dai_prepare if recipe == "dai" else {}), **overrides})

    def recipe_differences(self, parameters: dict[str, Any], recipe: str = "dai") -> list[str]:
        """Where a cache's ``parameters`` (its provenance) differ from a recipe: "name=value (recipe: value)"."""
        wanted = self.dai_prepare if recipe == "dai" else {}
        built = with_defaults(parameters)
        return [f"{k}={built.get(k)!r} ({recipe}: {v!r})" for k, v in wanted.items() if built.get(k) != v]

    @property
    def primary_protocol(self) -> str:
        return self.protocols_for(self.task)[0].protocol

    def download(self, root: str | Path, *, extract_archives: bool = True, **kwargs: Any) -> Path:
        """Fetch the public release into ``root`` (resumable, SHA-256 checked) and unpack its archives safely."""
        if not self.download_manifest:
            raise NotImplementedError(f"{self.name}: no public download. {self.download_help}")
        from emolib.data.download import extract, fetch_manifest

        root = Path(root)
        files = fetch_manifest({"files": self.download_manifest}, root / "downloads", **kwargs)
        if extract_archives:
            for path in files.values():
                if path.name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
                    extract(path, root)
        return root

    def verify(self, root: str | Path) -> VerifyReport:
        raise NotImplementedError

    def sources(self, root: str | Path, **options: Any) -> tuple[list[UtteranceSource], list[dict[str, Any]]]:
        """Utterances of the release plus the problems met while parsing (file, line, problem)."""
        raise NotImplementedError

    def prepare(self, root: str | Path, out: str | Path, *, params: PrepareParams | None = None,
                shard: tuple[int, int] = (0, 1), progress: bool = True, **options: Any) -> PrepareReport:
        """Build or resume the processed cache at ``out`` from the raw copy at ``root``."""
        sources, problems = self.sources(root, **options)
        if not sources:
            raise ValueError(f"{root}: no utterances found for {self.name} (run `emolib verify --dataset "
                             f"{self.name} {root}` to see what is missing)")
        extra = {"source_root": str(Path(root).resolve()), "synthetic": is_synthetic(root),
                 "options": {k: str(v) for k, v in options.items()},
                 **self.extra_provenance(root, sources, out, **options)}
        return prepare_sources(sources, out, dataset=self.name, label_names=self.label_names, task=self.task,
                               params=params, shard=shard, problems=problems, extra_provenance=extra,
                               progress=progress)

    def extra_provenance(self, root, sources, out, **options) -> dict[str, Any]:
        return {}
