"""A synthetic raw release ready for ``prepare``: the generator's files plus the fold file a real copy takes
from the SDK.

``synthesize_release`` runs ``emolib.data.synthetic.synthesize`` and adds
- CMU-MOSEI ``folds.json``: a seeded video-disjoint 70/10/20 fold file in the format ``prepare`` accepts, standing
  in for the CMU SDK standard folds that a real copy uses.
"""

from __future__ import annotations

from pathlib import Path

from emolib.data.splits import group_split
from emolib.io import write_json


def synthesize_release(dataset: str, out: str | Path, *, seed: int = 0, size: str = "smoke") -> Path:
    from emolib.data import synthetic

    root = Path(synthetic.synthesize(dataset, out, seed=seed, size=size))
    if dataset == "mosei":
        videos = sorted(p.stem for p in (root / "Videos/Full/Combined").glob("*.mp4"))
        by_video = group_split({v: v for v in videos}, seed=seed)
        write_json(root / "folds.json", {s: sorted(v for v, x in by_video.items() if x == s)
                                         for s in ("train", "valid", "test")})
    return root
