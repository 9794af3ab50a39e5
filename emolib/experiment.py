"""One call that the training notebooks share: cache -> datasets -> model -> loss -> fit, for each seed.

``run_experiment`` writes one run record per seed at
``results/<profile>/runs/<run name>/<dataset>/<primary protocol>/seed=<s>.json`` and keeps checkpoints under
``results/<profile>/checkpoints/...`` so an interrupted notebook resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emolib.data.cache import Cache
from emolib.data.dataset import CachedDataset, FrameOptions, collate


@dataclass
class Experiment:
    """What to train; every field ends up in the run record."""

    profile: str
    model: str
    cache_dir: str | Path
    config: str | dict = "tiny"  # a named configuration of the model (e.g. "tiny", "paper"), or a dict
    model_overrides: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None  # None: the cache task's loss (emolib.labels.TASK_LOSS)
    loss_params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    frames: dict[str, Any] = field(default_factory=dict)  # FrameOptions fields
    variant: str = ""  # a suffix that keeps runs of one model apart (e.g. "code-faithful")
    sims_labels: str = "M"  # CH-SIMS labels the run trains on: "M", or "M,A,T,V" for per-modality heads
    results_root: str | Path = "results"
    # Which records form train/valid/test (``SplitRule``): {} keeps the cache's splits; {"by": "speaker"} draws a
    # seeded speaker-disjoint split ("fractions", "seed"); {"by": "speaker", "folds": k} runs k folds
    # (leave-speakers-out), one record per fold, tables show mean ± std over folds and seeds.
    split: dict[str, Any] = field(default_factory=dict)
    # A model that reads a modality some records lack: "error" (at experiment start) or "fill" (those records get
    # a black face frame, 25 ms of silence or an empty text: emolib.data.dataset.CachedDataset).
    missing_modalities: str = "error"

    @property
    def run_name(self) -> str:
        return f"{self.model}-{self.variant}" if self.variant else self.model


@dataclass
class SplitData:
    cache: Cache
    train: CachedDataset
    valid: CachedDataset
    test: CachedDataset


@dataclass(frozen=True)
class SplitRule:
    """How a run picks its train/valid/test records from a cache (``Experiment.split``)."""

    by: str = ""  # "": the cache's own splits; "speaker": by the records' speaker
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    folds: int = 0  # k > 1: k-fold leave-speakers-out (valid: ``fractions[1]`` of the remaining speakers)
    fold: int | None = None  # one fold of k; None: run_experiment runs them all

    @classmethod
    def parse(cls, spec: dict[str, Any] | None) -> SplitRule:
        spec = dict(spec or {})
        unknown = sorted(set(spec) - {"by", "fractions", "seed", "folds", "fold"})
        if unknown:
            raise ValueError(f"split: unknown keys {unknown} (by, fractions, seed, folds, fold)")
        if "fractions" in spec:
            spec["fractions"] = tuple(float(x) for x in spec["fractions"])
        rule = cls(**spec)
        if rule.by not in ("", "speaker"):
            raise ValueError(f"split.by must be '' (the cache's splits) or 'speaker', got {rule.by!r}")
        if rule.folds and (rule.folds < 2 or not rule.by):
            raise ValueError("split.folds needs by='speaker' and at least 2 folds")
        return rule

    def assign(self, cache: Cache) -> dict[str, str] | None:
        """uid -> split, or None for the cache's own splits."""
        from emolib.data.splits import group_folds, group_split

        if not self.by:
            return None
        speakers = {m["uid"]: m.get("speaker") for m in cache.index}
        missing = [u for u, s in speakers.items() if not s]
        if missing:
            raise ValueError(f"{cache.root}: split by speaker, but {len(missing)} records have no speaker "
                             f"(e.g. {missing[0]}); give the CSV a speaker column")
        if self.folds:
            return group_folds(speakers, k=self.folds, fold=int(self.fold or 0), seed=self.seed,
                               valid_fraction=self.fractions[1])
        return group_split(speakers, seed=self.seed, fractions=self.fractions)


def split_uids(cache: Cache, record: Mapping[str, Any] | None = None, split: str = "test") -> list[str]:
    """The uids of ``split`` as a run drew them: the cache's own split, or the run's speaker split / fold
    (``record["extra"]["split"]``, ``SplitRule``)."""
    spec = (record or {}).get("extra", {}).get("split") or {}
    rule = SplitRule.parse(spec) if spec else None
    if rule is not None and rule.by:
        assignment = rule.assign(cache)
        return [u for u in cache.uids() if assignment[u] == split]
    return cache.uids(split)


def score(record: Mapping[str, Any], outputs: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """{protocol: average metrics} of ``outputs`` for every protocol of a run record, with its valid thresholds."""
    from emolib.metrics import get_protocol

    out = {}
    for name in record["metrics"]:
        proto = get_protocol(name)
        thresholds = record.get("thresholds", {}).get(name) if proto.needs_thresholds else None
        result = proto.evaluate(outputs, labels, list(record["class_names"]), thresholds=thresholds)
        out[name] = result["average"]
    return out


def load_splits(cache_dir: str | Path | Cache, frames: FrameOptions | None = None, *, split: SplitRule | None = None,
                fill_missing: bool = False, modalities: Collection[str] | None = None) -> SplitData:
    """The train, valid and test datasets of a cache (``split``: drawn by the rule instead of the cache's own);
    ``modalities``: only these are decoded (``CachedDataset``)."""
    cache = cache_dir if isinstance(cache_dir, Cache) else Cache(cache_dir)
    assignment = split.assign(cache) if split is not None else None
    datasets = []
    for s in ("train", "valid", "test"):
        uids = None if assignment is None else [u for u in cache.uids() if assignment[u] == s]
        datasets.append(CachedDataset(cache, s, frames=frames, uids=uids, fill_missing=fill_missing,
                                      modalities=modalities))
    return SplitData(cache, *datasets)


def check_modalities(model: Any, cache: Cache, missing: str = "error") -> None:
    """A clear error at experiment start when the model reads a modality that the cache lacks."""
    if missing not in ("error", "fill"):
        raise ValueError(f"missing_modalities must be 'error' or 'fill', got {missing!r}")
    counts, total = cache.modality_counts(), len(cache)
    name = getattr(model, "registry_name", type(model).__name__)
    for m in getattr(model, "input_modalities", ()):
        have = counts.get(m, total)
        if have == 0:
            others = [f"{x}-only" for x in ("audio", "visual", "text") if counts.get(x)]
            raise ValueError(f"{cache.root}: model {name!r} reads {m}, but no record of this cache has {m} "
                             f"(records hold: {', '.join(k for k, v in counts.items() if v) or 'nothing'}); "
                             f"use a model without it, e.g. {' or '.join(others) or 'none fits'}")
        if have < total and missing == "error":
            raise ValueError(f"{cache.root}: model {name!r} reads {m}, but {total - have} of {total} records have "
                             f"no {m}; pass missing_modalities='fill' to run it with placeholders for them")


def dataset_protocols(cache: Cache) -> list[str]:
    """The protocols a cache's dataset declares (its adapter; own data by the cache's task), primary first."""
    from emolib.data.adapter import dataset_protocols as declared

    if not cache.dataset:
        raise ValueError(f"{cache.root}: provenance.json names no dataset; rebuild the cache with `emolib prepare`")
    return [use.protocol for use in declared(cache.dataset, cache.task)]


def primary_protocol(cache: Cache) -> str:
    """The protocol of the papers' table for a cache's dataset."""
    return dataset_protocols(cache)[0]


def warn_recipe_mismatch(model: Any, cache: Cache, cache_dir: str | Path) -> list[str]:
    """Warn (and return the differences) when a model that follows a paper's preprocessing recipe is fed a cache
    built another way, naming each parameter that differs."""
    import warnings

    from emolib.data.adapter import get_adapter

    recipe = getattr(model, "data_recipe", None)
    if recipe is None or not cache.dataset:
        return []
    adapter = get_adapter(cache.dataset)
    if recipe == "dai" and not adapter.dai_prepare:
        return []
    diffs = adapter.recipe_differences(cache.provenance.get("parameters", {}), recipe)
    if diffs:
        warnings.warn(f"{getattr(model, 'registry_name', type(model).__name__)} follows Dai et al.'s preprocessing, "
                      f"but the cache {cache_dir} was built differently: {'; '.join(diffs)}. Rebuild it with "
                      f"face_recipe='{recipe}' (notebook 01) or `emolib prepare --recipe {recipe}`.", stacklevel=3)
    return diffs


def run_experiment(exp: Experiment, seeds: Sequence[int] = (0,), *, resume: bool = True,
                   data: SplitData | None = None,
                   on_epoch_end: Callable[[int, list[dict[str, Any]]], None] | None = None,
                   model_hook: Callable[[Any], None] | None = None,
                   num_processes: int = 1) -> list[dict[str, Any]]:
    """Train ``exp`` once per seed; returns the run records (the model of the last seed is left in memory via
    ``model_hook`` if given, e.g. for plots).

    ``num_processes > 1`` trains in that many processes (``accelerate launch -m emolib train``, see
    ``emolib.launch``); ``model_hook`` then gets each seed's best model rebuilt from ``best.pt``, and ``data`` is
    not used (the processes read ``exp.cache_dir``). Inside an already launched job it trains in-process."""
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        from emolib.launch import launch

        if on_epoch_end is not None:
            raise ValueError("on_epoch_end cannot reach other processes; use num_processes=1 with it")
        return launch(exp, seeds, num_processes, resume=resume, model_hook=model_hook)
    from emolib.labels import TASK_LOSS
    from emolib.losses import build_loss
    from emolib.models import build_model
    from emolib.records import record_path
    from emolib.train import TrainConfig, fit, seed_everything

    rule = SplitRule.parse(exp.split)
    if rule.folds and rule.fold is None:  # every fold, one record each
        from dataclasses import replace

        return [r for k in range(rule.folds) for r in run_experiment(
            replace(exp, split={**exp.split, "fold": k}), seeds, resume=resume, on_epoch_end=on_epoch_end,
            model_hook=model_hook)]
    fill = exp.missing_modalities == "fill"
    if rule.by:
        data = None
    elif data is not None and fill:
        data = SplitData(data.cache, *(CachedDataset(data.cache, d.split, frames=d.frames, uids=d.uids,
                                                     fill_missing=True, modalities=d.modalities)
                                       for d in (data.train, data.valid, data.test)))
    cache = data.cache if data is not None else Cache(exp.cache_dir)
    dataset = cache.display_name
    label_names = cache.label_names
    loss_name = exp.loss or TASK_LOSS[cache.task]
    fold = rule.fold if rule.folds else None
    records = []
    for seed in seeds:
        train_kwargs = {**exp.train, "seed": int(seed)}
        if not train_kwargs.get("eval_protocols"):
            train_kwargs["eval_protocols"] = dataset_protocols(cache)
        config = TrainConfig(**train_kwargs)
        primary = config.primary_protocol or config.eval_protocols[0]
        seed_everything(int(seed))  # the initial weights depend on the seed only, not on what ran before
        model = build_model(exp.model, exp.config, num_outputs=len(label_names), **exp.model_overrides)
        check_modalities(model, cache, exp.missing_modalities)
        if data is None:  # loaded once the model says what it reads (no random draws: the same run either way)
            data = load_splits(cache, FrameOptions(**exp.frames), split=rule if rule.by else None, fill_missing=fill,
                               modalities=getattr(model, "input_modalities", None))
        warn_recipe_mismatch(model, cache, exp.cache_dir)
        loss_params = _loss_params(loss_name, exp, label_names)
        loss = build_loss(loss_name, train_labels=data.train.labels, **loss_params)
        base = Path(exp.results_root)
        rec_path = record_path(base, exp.profile, exp.run_name, dataset, primary, int(seed), fold=fold)
        run_dir = base / exp.profile / "checkpoints" / exp.run_name / dataset / rec_path.stem
        record = fit(
            model, loss, data.train, data.valid, data.test, config=config, class_names=label_names,
            dataset_name=dataset, run_dir=run_dir, record_path=rec_path, collate_fn=collate,
            resume=resume and (run_dir / "last.pt").is_file(), on_epoch_end=on_epoch_end,
            run_info={
                "model": exp.model, "variant": exp.variant or "default", "profile": exp.profile,
                "dataset_adapter": cache.dataset, "model_params": model.config.to_dict(),
                "deviations": run_deviations(exp.model, cache, model, config, loss_name, loss_params),
                "model_config_name": exp.config if isinstance(exp.config, str) else None, "data_params": {
                    "cache": str(Path(exp.cache_dir)), "frames": exp.frames,
                    "cache_parameters": cache.provenance.get("parameters", {}),
                    "split_hash": cache.provenance.get("split_hash"),
                    "synthetic": bool(cache.provenance.get("synthetic"))},
                "loss": loss_name, "loss_params": exp.loss_params, "sims_labels": exp.sims_labels,
                **({"split": {**exp.split, "fold": fold}, "fold": fold} if rule.by else {}),
                **({"missing_modalities": "fill"} if fill else {}),
            },
        )
        if model_hook is not None:
            model_hook(model)
        records.append(record)
    return records


def run_deviations(model_name: str, cache: Cache, model: Any, config: Any, loss_name: str,
                   loss_params: dict[str, Any]) -> dict[str, Any]:
    """{parameter: value} of every deviation of the model and the cache's dataset, as this run sets them."""
    import inspect

    from emolib import registry
    from emolib.data.prepare import with_defaults
    from emolib.deviations import card, run_values
    from emolib.records import to_builtin

    entries = card(model_name, cache.dataset or None)
    loss_defaults = {k: p.default for k, p in inspect.signature(registry.get("loss", loss_name)).parameters.items()
                     if p.default is not inspect.Parameter.empty}
    provenance = cache.provenance
    values = run_values(entries, model_config=model.config.to_dict(), train=config.to_dict(),
                        loss={**loss_defaults, **loss_params},
                        prepare=with_defaults(provenance.get("parameters", {})),
                        data=dict(provenance.get("options", {})))
    return to_builtin(values)


def _loss_params(loss_name: str, exp: Experiment, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The experiment's loss parameters; a multitask loss also learns which CH-SIMS labels its heads use."""
    import inspect

    from emolib import registry

    params = dict(exp.loss_params)
    accepts = inspect.signature(registry.get("loss", loss_name)).parameters
    if "sims_labels" in accepts and "sims_labels" not in params:
        params["sims_labels"] = exp.sims_labels
    if "class_names" in accepts and "class_names" not in params and class_names is not None:
        params["class_names"] = list(class_names)  # warnings name classes, not column indices
    return params


def experiment_summary(records: Sequence[dict[str, Any]]):
    """Test averages of every protocol per seed in the protocol's display units (x100), as a DataFrame for a quick
    look in a notebook."""
    import pandas as pd

    from emolib.metrics import get_protocol

    rows = []
    for r in records:
        for proto_name, ev in r["metrics"].items():
            proto = get_protocol(proto_name)
            row = {"run": r["model"] + ("" if r["variant"] in ("", "default") else f"-{r['variant']}"),
                   "dataset": r["dataset"], "seed": r["seed"], "protocol": proto_name, "best_epoch": r["best_epoch"]}
            row.update({k: round(v, 2) if isinstance(v, float) else v
                        for k, v in ((k, proto.scaled(k, v)) for k, v in ev["test"]["average"].items())})
            rows.append(row)
    return pd.DataFrame(rows)
