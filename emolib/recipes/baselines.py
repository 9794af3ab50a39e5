"""The unimodal-baseline recipe (notebook 02): FE2E restricted to one modality, trained as the papers' "Audio",
"Visual" and "Text" rows (Dai et al. 2021's README command, with the smoke profile's shorter schedules)."""

from __future__ import annotations

from pathlib import Path

from emolib.experiment import Experiment, experiment_summary, run_experiment  # noqa: F401 (notebook API)


def unimodal_experiment(*, profile: str, dataset: str, modality: str, model_config: str = "tiny", text_model: str = "",
                        epochs: int = 40, batch_size: int = 8, lr: float = 5e-5, scheduler: str = "none",
                        warmup_epochs: float = 0.0, early_stop: int = 0, max_steps_per_epoch: int = 0,
                        test_each_epoch: bool = True, face_size: int | None = 48, max_frames: int = 0,
                        device: str = "auto", cache_dir: str = "",
                        results_root: str | Path = "results", progress: bool = True) -> Experiment:
    """The unimodal baseline run of notebook 02 from its parameters (0 / "" mean "off" / "default"), so the
    notebook and the tests that check the smoke profile's claims build exactly the same experiment."""
    if modality not in ("audio", "visual", "text"):
        raise ValueError(f"modality must be audio, visual or text, got {modality!r}")
    overrides = {"text_model": text_model} if (text_model and modality == "text") else {}
    return Experiment(
        profile=profile, model=f"{modality}-only", config=model_config, model_overrides=overrides,
        cache_dir=cache_dir or Path(results_root) / profile / "cache" / dataset, results_root=results_root,
        train={"epochs": epochs, "batch_size": batch_size, "lr": lr, "scheduler": scheduler,
               "warmup_epochs": warmup_epochs, "early_stop": early_stop or None,
               "max_steps_per_epoch": max_steps_per_epoch or None, "test_each_epoch": test_each_epoch,
               "device": device, "progress": progress},
        frames={"face_size": face_size, "max_frames": max_frames or None},
    )
