"""Train/valid/test splits in Dai's format (a folder with ``{train,valid,test}_split.txt``, one id per line).

- IEMOCAP: Dai's procedure is a random utterance-level 70/10/20 assignment over all sessions (speaker dependent);
  ``random_split`` reproduces the procedure with a seed (not Dai's exact lists, which we never copy). A user
  holding Dai's split folder passes it instead.
- CMU-MOSEI: the CMU SDK standard folds (video-disjoint), from a user-provided fold file or from the
  CMU-MultimodalSDK when installed.
- CH-SIMS: the ``mode`` column of label.csv (done by the adapter).

The split that defines a protocol is written next to the cache and its SHA-256 goes into the provenance, so a
split is never recomputed silently.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from emolib.io import write_text
from emolib.labels import SPLITS

SPLIT_FILES = {s: f"{s}_split.txt" for s in SPLITS}


def random_split(ids: Iterable[str], *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                 ) -> dict[str, str]:
    """Seeded random utterance-level split with Dai's proportions; returns id -> split."""
    ids = sorted(set(ids))
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = random.Random(seed)
    order = ids[:]
    rng.shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_valid = round(fractions[1] * len(order))
    if len(order) >= 3 and all(fractions):
        # Tiny sets (3 or 4 ids) would round the valid split to nothing: keep one id in every split.
        n_valid = max(n_valid, 1)
        n_train = min(max(n_train, 1), len(order) - n_valid - 1)
    out = {}
    for i, uid in enumerate(order):
        out[uid] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    return out


def group_split(groups: Mapping[str, str], *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                ) -> dict[str, str]:
    """Split by group (e.g. video id) so no group crosses splits; returns id -> split for each id in ``groups``."""
    by_group = random_split(set(groups.values()), seed=seed, fractions=fractions)
    return {uid: by_group[g] for uid, g in groups.items()}


def group_folds(groups: Mapping[str, str], *, k: int, fold: int, seed: int = 0, valid_fraction: float = 0.1
                ) -> dict[str, str]:
    """Fold ``fold`` of a seeded k-fold split by group (leave-speakers-out when the groups are speakers).

    The groups are shuffled with ``seed`` and dealt round-robin into ``k`` folds; fold ``fold``'s groups are the
    test split, ``valid_fraction`` of the other groups (at least one) the valid split, the rest train. Every group
    is a test group in exactly one fold. Returns id -> split for each id in ``groups``.
    """
    names = sorted(set(groups.values()))
    if not 2 <= k <= len(names):
        raise ValueError(f"k-fold by group: k must be between 2 and the number of groups ({len(names)}), got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"k-fold by group: fold must be in [0, {k}), got {fold}")
    order = names[:]
    random.Random(seed).shuffle(order)
    test = set(order[fold::k])
    rest = [g for g in order if g not in test]
    if len(rest) < 2:
        raise ValueError(f"k-fold by group: {len(names)} groups leave fold {fold} no group for valid and train; "
                         "use fewer folds or more groups")
    n_valid = max(1, round(valid_fraction * len(rest))) if len(rest) >= 2 else 0
    valid = set(rest[:n_valid])
    return {uid: "test" if g in test else "valid" if g in valid else "train" for uid, g in groups.items()}


def write_split_dir(assignment: Mapping[str, str], folder: str | Path) -> str:
    """Write Dai-format split files; returns the split's hash."""
    folder = Path(folder)
    for split, name in SPLIT_FILES.items():
        ids = sorted(u for u, s in assignment.items() if s == split)
        write_text(folder / name, "".join(f"{u}\n" for u in ids))
    return split_hash(assignment)


def read_split_dir(folder: str | Path) -> dict[str, str]:
    """Read Dai-format split files (``train_split.txt`` ...); an id in two files is an error."""
    folder = Path(folder)
    out: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: split file missing (expected {', '.join(SPLIT_FILES.values())})")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            uid = line.strip()
            if not uid:
                continue
            if uid in out and out[uid] != split:
                raise ValueError(f"{path}: line {n}: id {uid!r} is already in the {out[uid]} split")
            out[uid] = split
    return out


def split_hash(assignment: Mapping[str, str]) -> str:
    text = json.dumps(sorted(assignment.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_mosei_folds(path: str | Path) -> dict[str, str]:
    """Video-level folds from a user file: JSON ``{"train": [...], "valid": [...], "test": [...]}`` of video ids,
    or a Dai-format split folder of utterance ids (then returned as is). Returns id -> split."""
    path = Path(path)
    if path.is_dir():
        return read_split_dir(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: fold file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON fold file ({err})") from None
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise ValueError(f"{path}: a fold file needs the keys {', '.join(SPLITS)}")
    return {vid: split for split in SPLITS for vid in data[split]}


def mosei_sdk_folds() -> dict[str, str]:
    """The CMU-MultimodalSDK standard folds (video ids), when the SDK is installed."""
    try:
        from mmsdk.mmdatasdk.dataset.standard_datasets.CMU_MOSEI import cmu_mosei_std_folds as folds
    except ImportError:
        raise ImportError(
            "CMU-MOSEI folds: pass a fold file (JSON with train/valid/test video ids, or a Dai split folder) or "
            "install the CMU-MultimodalSDK (pip install git+https://github.com/A2Zadeh/CMU-MultimodalSDK)"
        ) from None
    return {
        **{v: "train" for v in folds.standard_train_fold},
        **{v: "valid" for v in folds.standard_valid_fold},
        **{v: "test" for v in folds.standard_test_fold},
    }
