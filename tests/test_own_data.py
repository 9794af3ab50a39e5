"""Own recordings end to end: any modality mix, single-label / multi-label / regression CSVs, every kind of bad row
named with its CSV line, the multiclass protocol and CE loss against scikit-learn, speaker splits and k-folds, the
CLI's one-line errors, and notebooks 01, 02 and 06 on an own-data cache built from the synthetic release."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emolib.data import get_adapter
from emolib.data.cache import Cache
from emolib.data.own import BadRows
from emolib.data.prepare import PrepareParams

ROOT = Path(__file__).resolve().parents[1]
PARAMS = PrepareParams(face_size=48, mtcnn_batch=16, device="cpu")


@pytest.fixture(scope="session")
def own_csvs(tiny_releases, tmp_path_factory) -> dict[str, Path]:
    """The tiny synthetic IEMOCAP re-exported as own data, one CSV per modality mix."""
    from emolib.data.synthetic.own_export import export_own

    return export_own(tiny_releases["iemocap"], tmp_path_factory.mktemp("own"))


@pytest.fixture(scope="session")
def own_caches(own_csvs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("own_caches")
    caches = {}
    for mix, csv_path in own_csvs.items():
        get_adapter("own").prepare(csv_path, out / mix, params=PARAMS, progress=False)
        caches[mix] = out / mix
    return caches


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- modality mixes ----------------------------------------------------------------------------------------

EXPECTED = {"av_text": {"visual", "audio", "text"}, "audio": {"audio"}, "images": {"visual"}, "text": {"text"}}


def test_every_modality_mix_verifies_and_prepares(own_csvs, own_caches) -> None:
    for mix, csv_path in own_csvs.items():
        report = get_adapter("own").verify(csv_path)
        assert report.ok, report.summary()
        cache = Cache(own_caches[mix])
        n = report.counts["rows"]
        assert len(cache) == n and cache.task == "multiclass"
        assert {m for m, c in cache.modality_counts().items() if c == n} == EXPECTED[mix]
        assert {m for m, c in cache.modality_counts().items() if c == 0} == {"visual", "audio", "text"} - EXPECTED[mix]
        assert cache.provenance["modalities"] == cache.modality_counts()
        rec = cache.load(cache.uids()[0])
        assert (rec.faces.shape[0] > 0) == ("visual" in EXPECTED[mix])
        assert (rec.audio.shape[0] > 0) == ("audio" in EXPECTED[mix])
        assert cache.display_name == mix  # the CSV's name names the dataset in records and tables


def test_models_use_what_the_cache_has(own_caches, tmp_path) -> None:
    from emolib.experiment import Experiment, run_experiment

    common = dict(profile="p", config="tiny", train={"epochs": 1, "batch_size": 4, "progress": False},
                  results_root=tmp_path)
    (rec,) = run_experiment(Experiment(model="audio-only", cache_dir=own_caches["audio"], **common), [0])
    assert rec["protocol"] == "multiclass" and rec["dataset"] == "audio"
    test = rec["metrics"]["multiclass"]["test"]
    assert set(test["average"]) >= {"wa", "ua", "f1"} and np.asarray(test["confusion"]["matrix"]).sum() == test["n"]
    # a multimodal model on a cache without a modality: one clear error at experiment start
    with pytest.raises(ValueError, match="reads text, but no record of this cache has text"):
        run_experiment(Experiment(model="fe2e", cache_dir=own_caches["audio"], **common), [0])


def test_missing_modalities_error_or_fill(own_csvs, tmp_path) -> None:
    """A CSV mixing audio-visual rows with text-only rows: FE2E refuses unless asked to fill the gaps."""
    from emolib.experiment import Experiment, run_experiment

    av = own_csvs["av_text"].read_text().splitlines()
    header, rows = av[0], av[1:]
    lines = [header] + [r if i % 3 else ",".join([r.split(",")[0], ""] + r.split(",")[2:]) for i, r in enumerate(rows)]
    csv_path = _write(own_csvs["av_text"].parent / "mixed.csv", lines)
    get_adapter("own").prepare(csv_path, tmp_path / "cache", params=PARAMS, progress=False)
    cache = Cache(tmp_path / "cache")
    assert 0 < cache.modality_counts()["visual"] < len(cache) == cache.modality_counts()["text"]
    common = dict(profile="p", model="fe2e", cache_dir=tmp_path / "cache", config="tiny",
                  train={"epochs": 1, "batch_size": 4, "progress": False}, results_root=tmp_path / "r")
    with pytest.raises(ValueError, match="missing_modalities='fill'"):
        run_experiment(Experiment(**common), [0])
    (rec,) = run_experiment(Experiment(**common, missing_modalities="fill"), [0])
    assert rec["extra"]["missing_modalities"] == "fill"


# --- bad rows --------------------------------------------------------------------------------------------

def test_every_bad_row_is_named_with_its_line_and_counted(own_csvs, tmp_path) -> None:
    base = own_csvs["audio"].parent
    good = own_csvs["audio"].read_text().splitlines()
    header = "id,audio,text,label,split,speaker"
    rows = [",".join(r.split(",")[:2] + [f"words {i}"] + r.split(",")[2:]) for i, r in enumerate(good[1:])]
    bad = [
        "a/b,audio/x.wav,hello,ang,train,S1",                    # bad id
        f"u_val,{rows[0].split(',')[1]},hello,ang,val,S1",      # unknown split
        "u_missing,audio/nothing.wav,hello,ang,train,S1",       # missing file
        f"u_class,{rows[0].split(',')[1]},hello,joy,train,S1",  # label not in the declared set
        f"u_two,{rows[0].split(',')[1]},hello,ang;sad,train,S1",  # two classes in a single-label CSV
        f"u_empty,{rows[0].split(',')[1]},,ang,train,S1",        # empty text: kept, with a note
    ]
    csv_path = _write(base / "bad.csv", [header, *rows, *bad])
    first_bad = len(rows) + 2
    classes = "ang,exc,fru,hap,neu,sad"
    report = get_adapter("own").verify(csv_path, classes=classes)
    text = report.summary()
    for offset, what in enumerate(["bad id 'a/b'", "unknown split 'val'", "file not found: audio/nothing.wav",
                                   "['joy'] not in the declared set", "exactly one class"]):
        assert f"line {first_bad + offset}: " in text and what in text, (what, text)
    assert f"line {first_bad + 5}: empty text" in text and not report.ok
    assert report.counts["rejected"] == 5 and report.counts["usable"] == len(rows) + 1
    with pytest.raises(BadRows) as err:
        get_adapter("own").prepare(csv_path, tmp_path / "c", params=PARAMS, progress=False, classes=classes)
    assert all(f"line {first_bad + k}:" in str(err.value) for k in range(5))
    assert not (tmp_path / "c" / "index.jsonl").exists()
    get_adapter("own").prepare(csv_path, tmp_path / "c", params=PARAMS, progress=False, classes=classes,
                               skip_bad_rows=True)
    cache = Cache(tmp_path / "c")
    assert len(cache) == len(rows) + 1  # nothing vanishes: the 5 rejected rows are listed in the provenance
    listed = {p["line"] for p in cache.provenance["problems"] if "empty text" not in p["problem"]}
    assert listed == set(range(first_bad, first_bad + 5))
    assert cache.provenance["fallbacks"].get("empty_text") is None  # no text modality: nothing to fall back from
    assert "text" not in cache.meta("u_empty")["modalities"]


def test_a_row_without_any_modality_and_bad_columns(tmp_path) -> None:
    csv_path = _write(tmp_path / "t.csv", ["id,text,label", "a,hello,x", "b,,y"])
    report = get_adapter("own").verify(csv_path)
    assert "line 3: no modality" in report.summary()
    report = get_adapter("own").verify(_write(tmp_path / "u.csv", ["id,text", "a,hi"]))
    assert not report.ok and "needs exactly one label column" in report.summary()


def test_multilabel_and_regression_csvs(tmp_path) -> None:
    adapter = get_adapter("own")
    ml = adapter.parse(_write(tmp_path / "ml.csv", ["id,text,labels", "a,one,x;y", "b,two,", "c,three,y"]))
    assert ml.task == "multilabel" and ml.label_names == ("x", "y") and not ml.problems
    assert [s.labels for s in ml.sources] == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    reg = adapter.parse(_write(tmp_path / "r.csv", ["id,text,value", "a,one,0.4", "b,two,-0.2", "c,x,abc",
                                                    "d,y,0.1;0.2"]))
    assert reg.task == "regression" and reg.label_names == ("M",)
    lines = {p["line"]: p["problem"] for p in reg.problems}
    assert "non-numeric" in lines[4] and "expected 1 label values" in lines[5]
    assert adapter.protocols_for(reg.task)[0].protocol == "sims"


# --- splits ---------------------------------------------------------------------------------------------

def test_speaker_splits_and_folds() -> None:
    from emolib.data.splits import group_folds, group_split

    speakers = {f"u{i}": f"s{i % 6}" for i in range(60)}
    split = group_split(speakers, seed=1)
    for s in set(speakers.values()):
        assert len({split[u] for u, sp in speakers.items() if sp == s}) == 1  # no speaker crosses splits
    tested = []
    for fold in range(3):
        a = group_folds(speakers, k=3, fold=fold, seed=0)
        test = {speakers[u] for u, x in a.items() if x == "test"}
        assert test and test.isdisjoint({speakers[u] for u, x in a.items() if x != "test"})
        assert {x for x in a.values()} == {"train", "valid", "test"}
        tested += sorted(test)
    assert sorted(tested) == sorted(set(speakers.values()))  # every speaker is tested exactly once


def test_kfold_records_average_over_folds() -> None:
    from emolib.records import aggregate
    from tests.test_tables import classification_record

    recs = []
    for fold in range(3):
        r = classification_record(0, dataset="own", adapter="own", classes=("calm", "tense"))
        r["extra"] = {**r.get("extra", {}), "fold": fold}
        recs.append(r)
    agg = aggregate(recs)
    row = agg[(agg["split"] == "test") & (agg["class"] == "avg")].iloc[0]
    assert row["n_seeds"] == 3 and row["folds"] == [0, 1, 2] and row["seeds"] == [0]


# --- multiclass protocol and cross-entropy against scikit-learn ---------------------------------------------

def test_multiclass_protocol_matches_sklearn() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

    from emolib.metrics import get_protocol

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    truth[truth == 3] = 2  # class 3 absent from the split
    scores = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[truth]
    onehot = np.eye(4)[truth]
    res = get_protocol("multiclass").evaluate(scores, onehot, ["a", "b", "c", "d"])
    pred = scores.argmax(1)
    assert res["average"]["wa"] == pytest.approx(accuracy_score(truth, pred))
    assert res["average"]["ua"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert res["average"]["f1"] == pytest.approx(f1_score(truth, pred, average="macro", labels=range(4),
                                                          zero_division=0))
    assert res["confusion"]["matrix"] == confusion_matrix(truth, pred, labels=range(4)).tolist()
    assert res["per_class"]["d"]["support"] == 0 and any("d: no clip" in n for n in res["notes"])
    with pytest.raises(ValueError, match="exactly one per clip"):
        get_protocol("multiclass").evaluate(scores[:2], [[1, 1, 0, 0], [1, 0, 0, 0]])


def test_cross_entropy_loss_and_balanced_weights() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    from emolib.losses import build_loss

    labels = torch.tensor(np.eye(3)[[0, 0, 0, 1, 2, 2]], dtype=torch.float32)
    logits = torch.randn(6, 3)
    plain = build_loss("ce", train_labels=labels)
    total, _ = plain({"logits": logits}, labels)
    assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels.argmax(1)).item())
    weighted = build_loss("ce", train_labels=labels, class_weights=True)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.argmax(1).numpy())
    assert np.allclose(weighted.class_weights.numpy(), expected)
    with pytest.raises(ValueError, match="one-hot"):
        build_loss("ce", train_labels=[[1.0, 1.0, 0.0]])


# --- command line ---------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emolib", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(own_csvs, tmp_path, capsys) -> None:
    from emolib.cli import main

    bad = _write(tmp_path / "bad.csv", ["id,audio,label", "x/y,a.wav,ang"])
    # one real process: the exit status and stderr as a shell sees them
    run = _cli("prepare", "--dataset", "own", str(bad), str(tmp_path / "c"), "--device", "cpu")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ") and "line 2: bad id 'x/y'" in run.stderr
    # the rest in this process (each subprocess costs seconds of imports): main's return value is the exit status
    with pytest.raises(ValueError, match="line 2: bad id 'x/y'"):  # --debug lets the exception (traceback) out
        main(["--debug", "prepare", "--dataset", "own", str(bad), str(tmp_path / "c")])
    capsys.readouterr()
    assert main(["predict", "a.mp4", "b.mp4", "--checkpoint", "x.pt", "--transcript", "one"]) == 2
    assert "1 --transcript for 2 videos" in capsys.readouterr().err
    assert main(["verify", "--dataset", "own", str(own_csvs["text"])]) == 0
    assert "OK" in capsys.readouterr().out


def test_list_answers_without_importing_torch() -> None:
    code = "import sys; from emolib.cli import main; main(['list']); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("False") and "multiclass" in run.stdout


def test_registry_index_is_current() -> None:
    from emolib import registry

    assert registry.read_index() == registry.as_table(), "run `emolib list --update-readme README.md`"


def test_predict_inputs_csv(tmp_path) -> None:
    from emolib.predict import read_inputs_csv

    csv_path = _write(tmp_path / "in.csv", ["video,transcript,segments", "a.mp4,hello,0:1.5", "a.mp4,there,1.5:3",
                                            "b.mp4,only one,"])
    videos, texts, segments = read_inputs_csv(csv_path)
    assert videos == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    assert texts == [["hello", "there"], ["only one"]] and segments == ["0:1.5,1.5:3", None]
    with pytest.raises(ValueError, match="line 2: segments"):
        read_inputs_csv(_write(tmp_path / "bad.csv", ["video,segments", "a.mp4,abc"]))



def test_predict_inputs_csv_on_an_own_multiclass_checkpoint(own_csvs, own_caches, tmp_path) -> None:
    """``emolib predict --inputs`` end to end: one transcript per segment, softmax scores over the own classes."""
    import csv

    from emolib.experiment import Experiment, run_experiment
    from emolib.predict import predict_cli

    exp = Experiment(profile="p", model="fe2e", config="tiny", cache_dir=own_caches["av_text"],
                     train={"epochs": 1, "batch_size": 4, "progress": False}, results_root=tmp_path)
    (rec,) = run_experiment(exp, [0])
    (checkpoint,) = (tmp_path / "p" / "checkpoints").rglob("best.pt")
    rows = list(csv.DictReader(own_csvs["av_text"].open(encoding="utf-8")))[:2]
    folder = own_csvs["av_text"].parent
    lines = ["video,transcript,segments"] + [f"{folder / r['video']},{r['text'].replace(',', ' ')},0:1" for r in rows]
    out = predict_cli({"inputs": str(_write(tmp_path / "clips.csv", lines)), "checkpoint": str(checkpoint),
                       "device": "cpu"})
    assert out.splitlines()[0] == "per-utterance probabilities (softmax over the classes):"
    table = [ln.split() for ln in out.splitlines()[1:]]
    assert table[0] == ["utterance", *rec["class_names"]]
    scores = [[float(x) for x in row[-len(rec["class_names"]):]] for row in table[1:3]]
    assert all(abs(sum(row) - 1) < 2e-3 for row in scores)  # softmax over the classes (3-decimal print)

# --- notebooks on own data --------------------------------------------------------------------------------

OWN_PROFILE = """
name: ownsmoke
parameters: {device: cpu}
steps:
  - name: data
    notebook: notebooks/01_data.ipynb
    parameters: {dataset: own, synth_size: tiny, face_size: 48, mtcnn_batch: 16}
    runs: [{id: av, own_mix: av_text, own_name: own-av, cache_dir: 'results/ownsmoke/cache/own-av'}]
  - name: baselines
    notebook: notebooks/02_unimodal_baselines.ipynb
    parameters: {dataset: own-av, model_config: tiny, epochs: 1, batch_size: 4, lr: 0.001}
    runs: [{id: text, modality: text}, {id: audio, modality: audio}]
  - name: tables
    notebook: notebooks/06_tables_figures.ipynb
    outputs: [results/ownsmoke/tables/own-av_multiclass.md]
"""


@pytest.mark.integration
def test_notebooks_on_an_own_data_cache(tmp_path) -> None:
    from emolib.pipeline.runner import run_profile

    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "ownsmoke.yaml").write_text(OWN_PROFILE)
    out = io.StringIO()
    assert run_profile("ownsmoke", root=tmp_path, out=out) == 0, out.getvalue()[-4000:]
    results = tmp_path / "results" / "ownsmoke"
    records = [json.loads(p.read_text()) for p in (results / "runs").rglob("seed=*.json")]
    assert sorted(r["model"] for r in records) == ["audio-only", "text-only"]
    assert {r["dataset"] for r in records} == {"own-av"} and {r["protocol"] for r in records} == {"multiclass"}
    table = (results / "tables" / "own-av_multiclass.md").read_text()
    assert "| WA | UA | F1 | citation |" in table and "own data (own-av)" in table
    assert (results / "figures" / "confusion_multiclass.png").is_file()


# --- params/own.yaml's claims -----------------------------------------------------------------------------

def _own_profile_runs(step: str) -> dict[str, dict]:
    from emolib.pipeline.profile import load_profile

    runs = load_profile("own", ROOT).runs
    return {r.key.split(":", 1)[1]: r.parameters for r in runs if r.key.startswith(step + ":")}


@pytest.fixture(scope="session")
def own_profile_caches(synthetic_release, tmp_path_factory) -> dict[str, Path]:
    """own_name -> cache, built exactly as params/own.yaml's data runs build them (smoke-size IEMOCAP re-export)."""
    from emolib.data.synthetic.own_export import export_own

    caches = {}
    for p in _own_profile_runs("data").values():
        root = synthetic_release("iemocap", p["synth_size"], p["synth_seed"])
        csv_path = export_own(root, tmp_path_factory.mktemp("own_export"), mixes=(p["own_mix"],))[p["own_mix"]]
        params = PrepareParams(face_size=p["face_size"], img_interval=p["img_interval"])
        out = tmp_path_factory.mktemp("own_profile") / p["own_name"]
        report = get_adapter("own").prepare(csv_path, out, params=params, progress=False, name=p["own_name"])
        assert report.complete and not report.skipped, report.summary()
        caches[p["own_name"]] = out
    return caches


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("run_id", sorted(_own_profile_runs("baselines")))
def test_own_profile_baselines_beat_chance(run_id, own_profile_caches, tmp_path) -> None:
    """Each baseline of params/own.yaml, with exactly its parameters, closes a quarter of the gap between the best
    constant predictor and the generator's bound for its modality (as tests/test_integration_baselines.py); WA of
    the multiclass protocol is the argmax accuracy those bounds are stated in. About 15 minutes for all runs."""
    from emolib.data import synthetic
    from emolib.experiment import run_experiment
    from emolib.recipes.baselines import unimodal_experiment

    params = {k: v for k, v in _own_profile_runs("baselines")[run_id].items() if k not in ("seeds", "profile")}
    params.update(profile="owntest", cache_dir=str(own_profile_caches[params["dataset"]]), results_root=tmp_path,
                  progress=False)
    (record,) = run_experiment(unimodal_experiment(**params), [0], resume=False)
    chance = synthetic.chance_accuracy("iemocap")
    bar = chance + 0.25 * (synthetic.cue_accuracy("iemocap", [params["modality"]]) - chance)
    test = record["metrics"]["multiclass"]["test"]["average"]
    assert record["protocol"] == "multiclass" and test["wa"] >= bar, (run_id, test, bar)
    # a constant predictor has UA = 1/C and macro-F1 below 1/C
    n_classes = len(record["class_names"])
    assert test["ua"] > 1 / n_classes and test["f1"] > 1 / n_classes, test

