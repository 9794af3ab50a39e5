"""Command line: ``emolib <command>`` (also ``python -m emolib``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from emolib.pipeline.runner import run_profile

    if args.bench:
        ignored = [flag for flag, value in (("--force", args.force), ("--only", args.only),
                                            ("--from", args.start_from), ("--dry-run", args.dry_run),
                                            ("--rehearse", args.rehearse)) if value]
        if ignored:
            raise ValueError(f"--bench times the whole profile from a clean folder; {', '.join(ignored)} cannot "
                             "apply to it (--set and --jobs can)")
        return _bench_profile(args)
    if args.keep:
        raise ValueError("--keep keeps the last repeat of --bench; without --bench there is nothing to keep")
    return run_profile(args.profile, root=Path(args.root) if args.root else None, force=args.force,
                       only=args.only, start_from=args.start_from, dry_run=args.dry_run, kernel=args.kernel,
                       overrides=args.set or (), rehearse=args.rehearse, jobs=args.jobs)


def _bench_profile(args: argparse.Namespace) -> int:
    import tempfile

    from emolib.bench.common import BENCH_DIR
    from emolib.io import write_json
    from emolib.pipeline.benchmark import bench_path, bench_profile
    from emolib.pipeline.profile import ProfileError

    with tempfile.TemporaryDirectory(prefix="emolib-bench-profile-") as tmp:
        try:
            result = bench_profile(Path(tmp), args.profile, repeats=args.bench,
                                   root=Path(args.root) if args.root else None, kernel=args.kernel,
                                   out=sys.stdout, jobs=args.jobs, keep=Path(args.keep) if args.keep else None,
                                   overrides=args.set or ())
        except ProfileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    path = bench_path(BENCH_DIR, result["profile"], result["overrides"])
    write_json(path, result)
    print(f"{result['profile']}: median {result['median_s']:.1f}s over {args.bench} run(s), spread "
          f"{result['spread_s'][0]:.1f}-{result['spread_s'][1]:.1f}s (target {result['target_s']:.0f}s: "
          f"{'met' if result['target_met'] else 'not met'}); {path}")
    if args.keep:
        print(f"the last repeat's folder: {args.keep}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from emolib import registry

    if args.update_readme:
        changed = registry.update_readme(args.update_readme)
        print(f"{args.update_readme}: registry table {'updated' if changed else 'already current'}")
        changed = registry.write_index()
        print(f"{registry.INDEX_PATH}: {'updated' if changed else 'already current'}")
        return 0
    if args.markdown:
        print(registry.markdown())
        return 0
    # the generated index answers without importing torch; --live imports the providers
    rows = registry.as_table(args.kind) if args.live else [
        r for r in registry.read_index() if args.kind is None or r["kind"] == args.kind]
    if not rows:
        print("nothing registered" + (f" of kind {args.kind}" if args.kind else ""))
        return 0
    width = max(len(r["name"]) for r in rows)
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            print(f"\n{kind}s:")
        print(f"  {r['name']:<{width}}  {r['summary']}")
        if args.verbose and r["details"]:
            print(f"  {'':<{width}}  {r['details']}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from emolib.data.release import synthesize_release

    if args.own:
        from emolib.data.synthetic.own_export import export_own

        root = synthesize_release("iemocap", Path(args.out) / "iemocap", seed=args.seed, size=args.size)
        for mix, csv_path in export_own(root, Path(args.out) / "own").items():
            print(f"own data ({mix}): {csv_path}")
        return 0
    for dataset in args.dataset:
        out = Path(args.out) / dataset if len(args.dataset) > 1 else Path(args.out)
        path = synthesize_release(dataset, out, seed=args.seed, size=args.size)
        print(f"{dataset}: synthetic raw release written to {path}")
    return 0


def _own_options(args: argparse.Namespace) -> dict:
    """The own-data options of verify/prepare that were given."""
    names = ("task", "classes", "split_by", "split_fractions", "name")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) not in (None, "")}


def _cmd_verify(args: argparse.Namespace) -> int:
    from emolib.data import get_adapter

    options = _own_options(args)
    if options and args.dataset != "own":
        raise ValueError(f"verify: {', '.join('--' + k.replace('_', '-') for k in options)} apply to own data only")
    report = get_adapter(args.dataset).verify(args.root, **options)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_download(args: argparse.Namespace) -> int:
    from emolib.data import get_adapter

    problem = _download_mode_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.splits:
        return _download_splits(args)
    try:
        root = get_adapter(args.dataset).download(args.root)
    except NotImplementedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: downloaded to {root}")
    return 0


def _download_mode_problem(args: argparse.Namespace) -> str | None:
    """``download`` has two modes: ``--dataset NAME DIR`` (a raw release) or ``--splits dai [--out DIR]``."""
    if args.splits:
        if args.dataset or args.root:
            return "download: give either --splits (with --out DIR) or --dataset NAME DIR, not both"
        return None
    if args.out:
        return "download: --out goes with --splits; a raw release takes --dataset NAME DIR"
    if not args.dataset or not args.root:
        return "download: give --dataset NAME DIR (a raw release) or --splits dai [--out DIR] (published split lists)"
    return None


def _download_splits(args: argparse.Namespace) -> int:
    from emolib.data.dai_splits import DAI_COMMIT, DAI_REPO, DEFAULT_DAI_SPLITS_DIR, fetch_dai_splits
    from emolib.data.download import DownloadError

    out = Path(args.out) if args.out else DEFAULT_DAI_SPLITS_DIR
    try:
        folders = fetch_dai_splits(out)
    except (DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Dai et al. (2021) split lists ({DAI_REPO} @ {DAI_COMMIT[:12]}), SHA-256 verified:")
    option = {"iemocap": "split_dir", "mosei": "folds"}
    for dataset, folder in folders.items():
        print(f"  {dataset}: {folder}  (data step: {option[dataset]}: {folder})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from emolib.data import get_adapter

    shard = (0, 1)
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        shard = (i, n)
    else:
        shard = _distributed_shard()
    overrides = {k: v for k, v in (
        ("img_interval", args.img_interval), ("face_size", args.face_size), ("mtcnn_batch", args.batch),
        ("device", args.device), ("frame_halve_above", args.frame_halve_above),
        ("frame_center_crop", args.frame_center_crop), ("margin_size", args.margin_size),
        ("face_fallback", args.face_fallback), ("max_video_seconds", args.max_video_seconds),
        ("face_codec", args.face_codec), ("face_quality", args.face_quality), ("audio_codec", args.audio_codec),
        ("min_face_size", args.min_face_size))
        if v is not None}
    adapter = get_adapter(args.dataset)
    try:
        params = adapter.prepare_params(args.recipe, **overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    options = {k: v for k, v in (("split_dir", args.split_dir), ("folds", args.folds), ("seed", args.seed))
               if v is not None}
    own = _own_options(args)
    if args.skip_bad_rows:
        own["skip_bad_rows"] = True
    if own and args.dataset != "own":
        raise ValueError(f"prepare: {', '.join('--' + k.replace('_', '-') for k in own)} apply to own data only")
    report = adapter.prepare(args.root, args.out, params=params, shard=shard, **options, **own)
    print(report.summary())
    if not report.complete:
        print("cache not finalised yet: other shards still have utterances to process")
    elif not report.n_written + report.n_resumed:
        print(f"error: {args.out}: no utterance could be prepared (see the skipped list above)", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from emolib.launch import run_command

    return run_command(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    from emolib.predict import predict_cli

    try:
        print(predict_cli({k: v for k, v in vars(args).items() if k not in ("func", "command")}))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _distributed_shard() -> tuple[int, int]:
    """Under ``accelerate launch`` / torchrun each rank takes its share of the source files."""
    import os

    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return (0, 1)
    local = os.environ.get("LOCAL_RANK")
    if local is not None:
        import torch

        # "cuda" then means this process's GPU, not GPU 0 for every rank
        if torch.cuda.is_available() and torch.cuda.device_count() > int(local):
            torch.cuda.set_device(int(local))
    return (int(rank), int(world))


def _add_own_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("own data (--dataset own; see emolib.data.own)")
    g.add_argument("--task", choices=("multiclass", "multilabel", "regression"),
                   help="override the task the label column states (label: multiclass, labels: multilabel, "
                        "value: regression)")
    g.add_argument("--classes", help="the declared classes in output order, comma-separated (default: those seen)")
    g.add_argument("--split-by", choices=("speaker",), help="rows without a split: speaker-disjoint seeded split")
    g.add_argument("--split-fractions", help="train,valid,test fractions of rows without a split (default 0.7,0.1,0.2)")
    g.add_argument("--name", help="the dataset name in run records and tables (default: the CSV's file name)")


def build_parser() -> argparse.ArgumentParser:
    from emolib import __version__
    from emolib.registry import KINDS

    parser = argparse.ArgumentParser(prog="emolib", description=__doc__)
    parser.add_argument("--version", action="version", version=f"emolib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a profile's notebooks in order (params/<profile>.yaml)")
    p.add_argument("profile", nargs="?", default="params/smoke.yaml", help="profile file or name (default: smoke)")
    p.add_argument("--force", action="store_true", help="rerun steps even when nothing changed")
    p.add_argument("--only", metavar="STEP", help="run only this step (or run key step:id)")
    p.add_argument("--from", dest="start_from", metavar="STEP", help="start at this step and run the rest")
    p.add_argument("--dry-run", action="store_true", help="print the plan without executing")
    p.add_argument("--kernel", help="Jupyter kernel name (default: one bound to this Python, installed if missing)")
    p.add_argument("--jobs", metavar="N", help="runs at a time, each in its own kernel with the cores shared out "
                                              "(a number or auto: one per core; default: the profile's jobs, else 1)")
    p.add_argument("--root", help="repository root (default: the folder above params/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter in every run that declares it (STEP.KEY=VALUE: one step); YAML values")
    p.add_argument("--bench", type=int, metavar="N",
                   help="time the profile N times from clean copies (not the results here) and write "
                        "results/bench/<profile>.json with where each run's time went (with --set: "
                        "<profile>-set.json, the overrides listed)")
    p.add_argument("--keep", metavar="DIR", help="with --bench: keep the last repeat's folder (notebooks, results) "
                                                "in DIR instead of deleting it")
    p.add_argument("--rehearse", action="store_true",
                   help="rehearse the profile on its synthetic release with the paper-size models, two short epochs, "
                        "into results/<profile>-rehearsal/, and estimate the cost of the real run")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("list", help="list registered datasets, models, losses and metric protocols")
    p.add_argument("kind", nargs="?", choices=KINDS)
    p.add_argument("-v", "--verbose", action="store_true", help="show metadata")
    p.add_argument("--live", action="store_true", help="import every provider instead of reading the generated index")
    p.add_argument("--markdown", action="store_true", help="print the README table of all entries")
    p.add_argument("--update-readme", metavar="README", help="rewrite the generated registry table in this file")
    p.set_defaults(func=_cmd_list)

    datasets = ("iemocap", "mosei", "sims")
    p = sub.add_parser("synth", help="write a synthetic raw release in the real layout")
    p.add_argument("--dataset", nargs="+", choices=datasets, default=list(datasets))
    p.add_argument("--out", required=True, help="folder (one sub-folder per dataset when several are given)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="smoke", help="smoke (default) or tiny")
    p.add_argument("--own", action="store_true",
                   help="write the synthetic IEMOCAP release and its own-data re-export (OUT/own/{av_text,audio,"
                        "images,text}.csv): an example of emolib.data.own's CSV format")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("verify", help="check a raw copy of a dataset (own data: the CSV) and list every problem")
    p.add_argument("--dataset", required=True)
    p.add_argument("root")
    _add_own_arguments(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("download", help="download a public raw release, or published split lists with --splits "
                                        "(resumable, checksummed)")
    p.add_argument("--dataset", help="raw release to download into DIR")
    p.add_argument("root", nargs="?", metavar="DIR", help="target folder of --dataset")
    p.add_argument("--splits", choices=["dai"], help="dai: Dai et al. 2021's IEMOCAP and CMU-MOSEI split lists")
    p.add_argument("--out", help="folder for --splits (default: data/splits/dai below the current folder)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("prepare", help="build (or resume) the processed cache of a raw release")
    p.add_argument("--dataset", required=True)
    p.add_argument("root", help="raw release folder (own data: the CSV file)")
    p.add_argument("out", help="cache folder")
    p.add_argument("--recipe", choices=("emolib", "dai"), default="emolib",
                   help="preprocessing recipe: emolib (whole frames) or dai (Dai et al.'s crops, margin, no-face "
                        "window and, for CMU-MOSEI, frame rate and 280 s cut); the flags below override it")
    p.add_argument("--img-interval", type=int, help="ms between sampled frames (default 500; Dai's MOSEI: 7500)")
    p.add_argument("--face-size", type=int, help="stored face crop side (default 224)")
    p.add_argument("--batch", type=int, help="MTCNN batch size (default 32)")
    p.add_argument("--frame-halve-above", type=int, help="halve frames taller than this (Dai's MOSEI: 360)")
    p.add_argument("--frame-center-crop", type=int, help="centre square fed to MTCNN (Dai: IEMOCAP 224, MOSEI 360)")
    p.add_argument("--margin-size", type=int, help="crop size at which the MTCNN margin applies (Dai: 48)")
    p.add_argument("--face-fallback", choices=("center", "dai", "black"), help="crop for frames without a face")
    p.add_argument("--max-video-seconds", type=float, help="decode only the first seconds (Dai's MOSEI: 280)")
    p.add_argument("--face-codec", choices=("jpeg", "raw"),
                   help="how faces are stored: jpeg (default; lossy, at --face-quality) or raw (exact crops)")
    p.add_argument("--face-quality", type=int, help="JPEG quality of stored faces, 1-100 (default 80)")
    p.add_argument("--min-face-size", type=int, help="MTCNN's smallest face in pixels (default 20; larger is "
                                                     "faster where every face is known to be larger)")
    p.add_argument("--audio-codec", choices=("flac", "raw"), help="how audio is stored (both lossless; default flac)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--shard", help="i/n: process every n-th source file starting at i")
    p.add_argument("--split-dir", help="IEMOCAP: a split folder in Dai's format")
    p.add_argument("--folds", help="CMU-MOSEI: fold file (JSON of video ids) or Dai split folder")
    p.add_argument("--seed", type=int, help="IEMOCAP random split / own-data split seed")
    _add_own_arguments(p)
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="own data: leave out the rows verify rejects (listed and counted) instead of refusing")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("predict", help="per-emotion probabilities for raw video files with any trained checkpoint "
                                       "(preprocessing in the pipeline)")
    p.add_argument("videos", nargs="*", help="video file(s)")
    p.add_argument("--checkpoint", required=True, help="best.pt of a training run (its run record is found beside)")
    p.add_argument("--transcript", action="append",
                   help="transcript text, or a file with one line per segment; once per video for several videos")
    p.add_argument("--inputs", metavar="CSV",
                   help="instead of VIDEOS: a CSV with columns video, transcript, segments (start:end), one row per "
                        "utterance")
    p.add_argument("--segments", help="utterance segments in seconds, e.g. 0:2.5,2.5:6 (default: whole video)")
    p.add_argument("--audio", help="separate audio file (CMU-MOSEI keeps audio in a wav beside the video; IEMOCAP "
                                   "dialogs: the stereo dialog/wav/<dialog>.wav)")
    p.add_argument("--utterance-ids", metavar="ID[,ID...]",
                   help="IEMOCAP utterance ids, one per segment (e.g. Ses01F_impro01_F000): each picks its speaker's "
                        "half of the frame and audio channel (Dai's rule)")
    p.add_argument("--speaker", metavar="L|R",
                   help="IEMOCAP dialogs: the left (L, channel 0) or right (R, channel 1) actor for every segment; "
                        "overrides the side the utterance ids give")
    p.add_argument("--record", help="run record JSON, if not found next to the checkpoint")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--profile", action="store_true",
                   help="also print the seconds of every stage (decode, faces, audio read, each model part)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the branch backbones (same scores; pays off only over many clips)")
    p.add_argument("--bf16", action="store_true",
                   help="lossy: bfloat16 autocast (CUDA, or a CPU with AVX512-BF16 / AMX); see the README's Measured")
    p.add_argument("--int8", action="store_true",
                   help="lossy, CPU: dynamic int8 quantisation of the Linear layers; see the README's Measured")
    p.add_argument("--min-face-size", type=int, metavar="PX",
                   help="lossy: MTCNN's smallest face in pixels (training used 20); larger skips the costliest "
                        "pyramid levels, for clips whose faces are known to be large")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("train", help="train one experiment (YAML/JSON file or flags); several processes with "
                                     "--num-processes N, accelerate launch or torchrun")
    from emolib.launch import add_arguments  # standard library only at import: --help stays fast

    add_arguments(p)
    p.set_defaults(func=_cmd_train)
    return parser


# Failures a user can fix (a path, a value, a file's content): one line naming the file and the problem.
def _expected_errors() -> tuple[type[BaseException], ...]:
    from emolib.data.cache import CacheError

    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, KeyError, CacheError, OSError]
    for module, name in (("emolib.data.media", "MediaError"), ("emolib.data.download", "DownloadError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        expected = isinstance(err, _expected_errors())
        print(f"error: {message}" if expected else f"error: {type(err).__name__}: {message}", file=sys.stderr)
        if not expected:
            print("(an unexpected failure: run again with --debug for the traceback and report it)", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
