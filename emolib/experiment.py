"""One call that the training notebooks share: cache -> datasets -> model -> loss -> fit, for each seed.

``run_experiment`` writes one run record per seed at
``results/<profile>/runs/<run name>/<dataset>/<primary protocol>/seed=<s>.json`` and keeps checkpoints under
``results/<profile>/checkpoints/...`` so an interrupted notebook resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    loss: str | None = None  # None: bce for classification, l1 for regression
    loss_params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    frames: dict[str, Any] = field(default_factory=dict)  # FrameOptions fields
    variant: str = ""  # a suffix that keeps runs of one model apart (e.g. "code-faithful")
    sims_labels: str = "M"  # CH-SIMS labels the run trains on: "M", or "M,A,T,V" for per-modality heads
    results_root: str | Path = "results"

    @property
    def run_name(self) -> str:
        return f"{self.model}-{self.variant}" if self.variant else self.model


@dataclass
class SplitData:
    cache: Cache
    train: CachedDataset
    valid: CachedDataset
    test: CachedDataset


def load_splits(cache_dir: str | Path, frames: FrameOptions | None = None) -> SplitData:
    cache = Cache(cache_dir)
    return SplitData(cache, *(CachedDataset(cache, s, frames=frames) for s in ("train", "valid", "test")))


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
                   model_hook: Callable[[Any], None] | None = None) -> list[dict[str, Any]]:
    """Train ``exp`` once per seed; returns the run records (the model of the last seed is left in memory via
    ``model_hook`` if given, e.g. for plots)."""
    from emolib.losses import build_loss
    from emolib.models import build_model
    from emolib.records import record_path
    from emolib.train import TrainConfig, fit, seed_everything

    data = data or load_splits(exp.cache_dir, FrameOptions(**exp.frames))
    cache = data.cache
    dataset = cache.display_name
    label_names = cache.label_names
    loss_name = exp.loss or ("l1" if cache.task == "regression" else "bce")
    records = []
    for seed in seeds:
        train_kwargs = {**exp.train, "seed": int(seed)}
        if not train_kwargs.get("eval_protocols"):
            train_kwargs["eval_protocols"] = dataset_protocols(cache)
        config = TrainConfig(**train_kwargs)
        primary = config.primary_protocol or config.eval_protocols[0]
        seed_everything(int(seed))  # the initial weights depend on the seed only, not on what ran before
        model = build_model(exp.model, exp.config, num_outputs=len(label_names), **exp.model_overrides)
        warn_recipe_mismatch(model, cache, exp.cache_dir)
        loss_params = _loss_params(loss_name, exp)
        loss = build_loss(loss_name, train_labels=data.train.labels, **loss_params)
        base = Path(exp.results_root)
        rec_path = record_path(base, exp.profile, exp.run_name, dataset, primary, int(seed))
        run_dir = base / exp.profile / "checkpoints" / exp.run_name / dataset / f"seed={int(seed)}"
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


def _loss_params(loss_name: str, exp: Experiment) -> dict[str, Any]:
    """The experiment's loss parameters; a multitask loss also learns which CH-SIMS labels its heads use."""
    import inspect

    from emolib import registry

    params = dict(exp.loss_params)
    accepts = inspect.signature(registry.get("loss", loss_name)).parameters
    if "sims_labels" in accepts and "sims_labels" not in params:
        params["sims_labels"] = exp.sims_labels
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
