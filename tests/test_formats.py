"""Raw-format parsers and writers, checked against hand-written snippets in the real layouts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from emolib.data import formats as F
from emolib.labels import MOSEI_EMOTIONS

IEMOCAP_EVAL = (
    "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"
    "\n"
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
    "C-E2:\tNeutral state;\t()\n"
    "C-E3:\tNeutral state;\t()\n"
    "C-F1:\tNeutral state; Frustration;\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-F1:\tval 3; act 2; dom  1;\t()\n"
    "\n"
    "[10.0100 - 11.3925]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.5000]\n"
    "C-E2:\tFrustration;\t()\n"
    "A-E3:\tval 2; act 3; dom  4;\t()\n"
    "\n"
    "[14.8872 - 18.0175]\tSes01F_script01_1_F001\txxx\t[2.6667, 3.0000, 2.6667]\n"
    "C-E2:\tAnger;\t()\n"
    "\n"
)

IEMOCAP_TRANSCRIPT = (
    "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
    "Ses01F_impro01_M000 [010.0100-011.3925]: Do you have your forms: the green ones?\n"
    "Ses01F_impro01_MXX0 [011.0000-011.4000]: Yeah.\n"
    "M: [BREATHING]\n"
    "\n"
    "Ses01F_impro01_F001 [014.8872-018.0175]: \n"
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------- IEMOCAP


def test_iemocap_evaluation_parses_consensus_lines_only(tmp_path: Path) -> None:
    rows = F.parse_iemocap_evaluation(write(tmp_path, "Ses01F_impro01.txt", IEMOCAP_EVAL))
    assert rows == [
        F.IemocapEvaluation("Ses01F_impro01_F000", 6.2901, 8.2357, "neu", (2.5, 2.5, 2.5)),
        F.IemocapEvaluation("Ses01F_impro01_M000", 10.01, 11.3925, "fru", (2.0, 3.5, 3.5)),
        F.IemocapEvaluation("Ses01F_script01_1_F001", 14.8872, 18.0175, "xxx", (2.6667, 3.0, 2.6667)),
    ]


def test_iemocap_evaluation_accepts_crlf_and_bom(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + IEMOCAP_EVAL.replace("\n", "\r\n").encode()
    rows = F.parse_iemocap_evaluation(write(tmp_path, "e.txt", data))
    assert [r.utt_id for r in rows] == ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_script01_1_F001"]


def test_iemocap_evaluation_bad_lines_raise_with_file_and_line(tmp_path: Path) -> None:
    bad = IEMOCAP_EVAL.replace("[10.0100 - 11.3925]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.5000]",
                               "[10.0100 - 11.3925]\tSes01F_impro01_M000\tfru")
    path = write(tmp_path, "bad.txt", bad)
    with pytest.raises(F.FormatError, match=rf"^{path}: line 10: malformed evaluation line"):
        F.parse_iemocap_evaluation(path)


def test_iemocap_evaluation_skip_and_report(tmp_path: Path) -> None:
    text = IEMOCAP_EVAL + (
        "[20.0 - 19.0]\tSes01F_impro01_F002\tang\t[1.0, 4.0, 4.0]\n"  # line 17: end before start
        "[21.0 - 22.0]\tSes01F_impro01_F000\tang\t[1.0, 4.0, 4.0]\n"  # line 18: duplicate id
        "[23.0 - 24.0]\tSes01F_impro01_F003\tjoy\t[1.0, 4.0, 4.0]\n"  # line 19: unknown label
        "[25.0 - 26.0]\tSes01F_impro01_F004\tsad\t[1.5, 2.0, 2.0]\n"  # line 20: fine
    )
    path = write(tmp_path, "e.txt", text)
    problems: list[F.LineProblem] = []
    rows = F.parse_iemocap_evaluation(path, problems=problems)
    assert [r.utt_id for r in rows][-1] == "Ses01F_impro01_F004"
    assert len(rows) == 4
    assert [(p.path, p.line) for p in problems] == [(str(path), 17), (str(path), 18), (str(path), 19)]
    assert "bad time interval" in problems[0].message
    assert "duplicate utterance id Ses01F_impro01_F000 (first on line 3)" in problems[1].message
    assert "unknown label 'joy'" in problems[2].message
    assert str(problems[2]).startswith(f"{path}: line 19: ")


def test_iemocap_transcription_skips_non_utterances_and_keeps_colons(tmp_path: Path) -> None:
    rows = F.parse_iemocap_transcription(write(tmp_path, "t.txt", IEMOCAP_TRANSCRIPT))
    assert rows == [
        F.IemocapTurn("Ses01F_impro01_F000", 6.2901, 8.2357, "Excuse me."),
        F.IemocapTurn("Ses01F_impro01_M000", 10.01, 11.3925, "Do you have your forms: the green ones?"),
        F.IemocapTurn("Ses01F_impro01_F001", 14.8872, 18.0175, ""),
    ]


def test_iemocap_transcription_malformed_utterance_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", IEMOCAP_TRANSCRIPT + "Ses01F_impro01_F002 006.2901-008.2357: no brackets\n")
    with pytest.raises(F.FormatError, match=r"line 7: malformed transcription line"):
        F.parse_iemocap_transcription(path)


def test_iemocap_non_utf8_raises_or_is_reported(tmp_path: Path) -> None:
    data = IEMOCAP_TRANSCRIPT.encode().replace(b"Excuse me.", b"Excuse m\xe9.")  # latin-1 e-acute
    path = write(tmp_path, "t.txt", data)
    with pytest.raises(F.FormatError, match=rf"^{path}: line 1: not valid UTF-8 \(byte offset 49"):
        F.parse_iemocap_transcription(path)
    problems: list[F.LineProblem] = []
    rows = F.parse_iemocap_transcription(path, problems=problems)
    assert rows[0].text == "Excuse m\ufffd."
    assert [(p.line, "not valid UTF-8" in p.message) for p in problems] == [(1, True)]


def test_iemocap_speaker_side_rule() -> None:
    assert F.iemocap_use_left("Ses01F_impro01_F000")
    assert not F.iemocap_use_left("Ses01F_impro01_M000")
    assert F.iemocap_use_left("Ses03M_script02_1_M012")
    assert not F.iemocap_use_left("Ses03M_script02_1_F012")
    assert F.iemocap_dialog("Ses03M_script02_1_F012") == "Ses03M_script02_1"
    assert not F.is_iemocap_utterance_id("Ses01F_impro01_MXX0")
    with pytest.raises(ValueError, match="not an IEMOCAP utterance id"):
        F.iemocap_use_left("Ses01F_impro01")


def test_iemocap_writers_round_trip(tmp_path: Path) -> None:
    ev = F.IemocapEvaluation("Ses02M_impro03_F004", 1.5, 3.25, "hap", (4.0, 3.5, 2.6667))
    block = F.IemocapBlock(ev, (("C-E1", ("Happiness",), ""), ("C-E2", ("Happiness", "Excited"), "glad")),
                           (("A-E1", (4, 3, 3)),))
    text = F.format_iemocap_evaluation([block])
    assert text.splitlines()[2:6] == [
        "[1.5000 - 3.2500]\tSes02M_impro03_F004\thap\t[4.0000, 3.5000, 2.6667]",
        "C-E1:\tHappiness;\t()",
        "C-E2:\tHappiness; Excited;\t(glad)",
        "A-E1:\tval 4; act 3; dom  3;\t()",
    ]
    assert F.parse_iemocap_evaluation(write(tmp_path, "e.txt", text)) == [ev]
    turns = [F.IemocapTurn("Ses02M_impro03_F004", 1.5, 3.25, "Great."),
             F.IemocapTurn("Ses02M_impro03_MXX0", 2, 2.5, "Hm.")]
    text = F.format_iemocap_transcription(turns)
    assert text.splitlines()[0] == "Ses02M_impro03_F004 [001.5000-003.2500]: Great."
    assert F.parse_iemocap_transcription(write(tmp_path, "t.txt", text)) == turns[:1]


# ---------------------------------------------------------------------------------------------- MOSEI


def test_mosei_transcript_splits_on_first_four_separators(tmp_path: Path) -> None:
    text = (
        "-3g5yACwYnA___2___4.840___14.052___Key Polymer brings a technical aspect___to our organisation\n"
        "-3g5yACwYnA___3___13.211___27.521___We're a huge user of adhesives.\n"
        "\n"
        "-3g5yACwYnA___10___-0.2___1.0___\n"
    )
    rows = F.parse_mosei_transcript(write(tmp_path, "-3g5yACwYnA.txt", text))
    assert rows == [
        F.MoseiSegment("-3g5yACwYnA", 2, 4.84, 14.052, "Key Polymer brings a technical aspect___to our organisation"),
        F.MoseiSegment("-3g5yACwYnA", 3, 13.211, 27.521, "We're a huge user of adhesives."),
        F.MoseiSegment("-3g5yACwYnA", 10, -0.2, 1.0, ""),
    ]
    assert rows[0].utt_id == "-3g5yACwYnA_2"


def test_mosei_transcript_problems(tmp_path: Path) -> None:
    text = (
        "abc___0___1.0___2.0___fine\n"
        "abc___1___1.0___text without end time\n"
        "abc___0___3.0___4.0___duplicate\n"
        "abc___x___3.0___4.0___clip is not a number\n"
        "abc___5___3.0___3.0___empty interval\n"
    )
    path = write(tmp_path, "abc.txt", text)
    with pytest.raises(F.FormatError, match=rf"^{path}: line 2: malformed segment"):
        F.parse_mosei_transcript(path)
    problems: list[F.LineProblem] = []
    rows = F.parse_mosei_transcript(path, problems=problems)
    assert [r.text for r in rows] == ["fine"]
    assert [p.line for p in problems] == [2, 3, 4, 5]
    assert "duplicate clip 0 of abc (first on line 1)" in problems[1].message


MTURK_A = (
    "HITId,WorkerId,Input.VIDEO_ID,Input.CLIP,Answer.anger,Answer.disgust,Answer.fear,Answer.happiness,"
    "Answer.sadness,Answer.surprise,Answer.sentiment\n"
    "H1,W1,-3g5yACwYnA,10,0,0,1,2,0,0,1\n"
    "H1,W2,-3g5yACwYnA,10,0,0,0,1,1,0,0\n"
    "H1,W3,-3g5yACwYnA,10,0,0,0,0,0,0,0\n"
    "H2,W1,--qXJuDtHPw,5,0,0,0,3,0,0,2\n"
)
MTURK_B = (
    "WorkerId,Input.VIDEO_ID,Input.CLIP,Answer.happiness,Answer.sadness,Answer.anger,Answer.disgust,"
    "Answer.fear,Answer.surprise\n"
    "W4,videos/full/--qXJuDtHPw,5,0,0,0,0,0,1\n"
    "W5,-3g5yACwYnA,13,,,,,,\n"
)


def test_mosei_labels_aggregate_like_dais_notebook(tmp_path: Path) -> None:
    labels = tmp_path / "Labels"
    write(labels, "a.csv", MTURK_A)
    write(labels, "b.csv", MTURK_B)
    rows = F.parse_mosei_labels(labels)
    assert [r.utt_id for r in rows] == ["-3g5yACwYnA_10"] * 3 + ["--qXJuDtHPw_5", "--qXJuDtHPw_5", "-3g5yACwYnA_13"]
    assert rows[3].answers == (0, 0, 0, 3, 0, 0)
    assert rows[4].answers == (0, 0, 0, 0, 0, 1)  # columns are matched by name, not position
    assert rows[5].answers == (0,) * 6  # empty cells count as 0
    agg = F.aggregate_mosei_labels(rows)
    assert agg == {
        "-3g5yACwYnA_10": (0, 0, 1, 1, 1, 0),
        "--qXJuDtHPw_5": (0, 0, 0, 1, 0, 1),
        "-3g5yACwYnA_13": (0, 0, 0, 0, 0, 0),
    }
    # The notebook's own pandas recipe gives the same table.
    df = pd.concat([pd.read_csv(p) for p in sorted(labels.glob("*.csv"))])
    df["uttr_id"] = df.apply(lambda x: f"{str(x['Input.VIDEO_ID']).split('/')[-1]}_{x['Input.CLIP']}", axis="columns")
    cols = [f"Answer.{e}" for e in MOSEI_EMOTIONS]
    ref = (df[["uttr_id", *cols]].groupby("uttr_id").sum() > 0).astype(int)
    assert {uid: tuple(int(v) for v in row) for uid, row in ref.iterrows()} == agg


def test_mosei_label_csv_problems(tmp_path: Path) -> None:
    text = MTURK_A + (
        "H3,W1,abc,7,0,0,lots,0,0,0,0\n"
        "H3,W1,abc,7.5,0,0,0,0,0,0,0\n"
        "H3,W1,abc,7,0,-1,0,0,0,0,0\n"
        "H4,W1,abc,8,0\n"
    )
    path = write(tmp_path, "batch.csv", text)
    with pytest.raises(F.FormatError, match=rf"^{path}: line 6: Answer.fear is not a number: 'lots'"):
        F.parse_mosei_label_csv(path)
    problems: list[F.LineProblem] = []
    rows = F.parse_mosei_label_csv(path, problems=problems)
    assert len(rows) == 4
    assert [p.line for p in problems] == [6, 7, 8, 9]
    assert "Input.CLIP is not a clip index: '7.5'" in problems[1].message
    assert "Answer.disgust is negative" in problems[2].message
    assert "fewer fields" in problems[3].message
    missing = write(tmp_path, "missing.csv", "Input.VIDEO_ID,Input.CLIP,Answer.anger\nabc,1,0\n")
    with pytest.raises(F.FormatError, match=r"line 1: missing column\(s\) Answer.disgust, Answer.fear"):
        F.parse_mosei_label_csv(missing, problems=[])
    with pytest.raises(FileNotFoundError, match="no label CSV files"):
        F.parse_mosei_labels(tmp_path / "nowhere")


def test_mosei_writers_round_trip(tmp_path: Path) -> None:
    segments = [F.MoseiSegment("zz-Top12345", 0, 0.5, 2.25, "Hello there."),
                F.MoseiSegment("zz-Top12345", 1, 2.4, 4.0, "")]
    text = F.format_mosei_transcript(segments)
    assert text.splitlines()[0] == "zz-Top12345___0___0.500___2.250___Hello there."
    assert F.parse_mosei_transcript(write(tmp_path, "zz-Top12345.txt", text)) == segments
    rows = [F.MoseiAnnotation("zz-Top12345", 0, "W9", (0, 1, 0, 2, 0, 0)),
            F.MoseiAnnotation("zz-Top12345", 1, "W8", (0,) * 6)]
    extra = [{"HITId": "H", "Answer.sentiment": "-1"}, {"HITId": "H", "Answer.sentiment": "0"}]
    csv_text = F.format_mosei_label_csv(rows, extra)
    assert csv_text.splitlines()[0] == (
        "HITId,WorkerId,Input.VIDEO_ID,Input.CLIP,Answer.anger,Answer.disgust,Answer.fear,Answer.happiness,"
        "Answer.sadness,Answer.surprise,Answer.sentiment"
    )
    assert F.parse_mosei_label_csv(write(tmp_path, "x.csv", csv_text)) == rows


# ---------------------------------------------------------------------------------------------- CH-SIMS

SIMS_CSV = (
    "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
    "video_0001,0001,我们今天去了学校，我很开心。,0.8,1.0,0.6,0.8,Positive,train\n"
    'video_0001,0002,"好吧, 他说 ""明天"" 再来",-0.2,0.0,-0.4,-0.2,Negative,valid\n'
    "video_0002,0010,嗯,0.0,0.0,0.0,-0.2,Neutral,test\n"
)


def test_sims_labels_keep_strings_and_quoted_commas(tmp_path: Path) -> None:
    rows = F.parse_sims_labels(write(tmp_path, "label.csv", SIMS_CSV))
    assert rows[0] == F.SimsRow("video_0001", "0001", "我们今天去了学校，我很开心。", 0.8, 1.0, 0.6, 0.8,
                                "Positive", "train")
    assert rows[1].text == '好吧, 他说 "明天" 再来'
    assert rows[1].clip_id == "0002"
    assert rows[2].uid == "video_0002$_$0010"
    # pandas with the MMSA dtype convention reads the same table.
    df = pd.read_csv(tmp_path / "label.csv", dtype={"video_id": str, "clip_id": str, "text": str})
    assert list(df["text"]) == [r.text for r in rows]
    assert list(df["label_A"]) == [r.label_A for r in rows]


def test_sims_labels_problems(tmp_path: Path) -> None:
    text = SIMS_CSV + (
        "video_0003,0001,ok,1.4,0,0,0,Positive,train\n"
        "video_0003,0002,ok,0.2,0,0,0,Positive,dev\n"
        "video_0003,0003,ok,0.2,0,0,0,Good,train\n"
        "video_0001,0001,again,0.2,0,0,0,Positive,train\n"
        "video_0003,0004,ok,0.2,0,0\n"
        'video_0003,0005,"multi\nline, text",0.2,0.2,0.2,0.2,Positive,test\n'
    )
    path = write(tmp_path, "label.csv", text)
    with pytest.raises(F.FormatError, match=rf"^{path}: line 5: label = 1.4 is outside \[-1, 1\]"):
        F.parse_sims_labels(path)
    problems: list[F.LineProblem] = []
    rows = F.parse_sims_labels(path, problems=problems)
    assert [r.clip_id for r in rows] == ["0001", "0002", "0010", "0005"]
    assert rows[-1].text == "multi\nline, text"
    assert [p.line for p in problems] == [5, 6, 7, 8, 9]
    assert "mode 'dev' is not one of train, valid, test" in problems[1].message
    assert "annotation 'Good'" in problems[2].message
    assert "duplicate clip video_0001$_$0001 (first on line 2)" in problems[3].message
    assert "fewer fields" in problems[4].message


def test_sims_non_utf8_and_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "label.csv", SIMS_CSV.encode("utf-8").replace("开心".encode(), "开心".encode("gbk")))
    with pytest.raises(F.FormatError, match=rf"^{path}: line 2: not valid UTF-8"):
        F.parse_sims_labels(path)
    problems: list[F.LineProblem] = []
    rows = F.parse_sims_labels(path, problems=problems)
    assert len(rows) == 3 and "\ufffd" in rows[0].text
    assert [p.line for p in problems] == [2]
    bad = write(tmp_path, "b.csv", "video_id,clip_id,text,label\nv,1,t,0\n")
    with pytest.raises(F.FormatError, match=r"line 1: missing column\(s\) label_T, label_A, label_V, annotation, mode"):
        F.parse_sims_labels(bad)


def test_sims_writer_round_trip(tmp_path: Path) -> None:
    rows = [
        F.SimsRow("video_0007", "0003", 'hao ba, wo "hen" kaixin。', 0.6, 0.4, 1.0, -0.2, "Positive", "test"),
        F.SimsRow("video_0007", "0004", "na tian xia yu le", 0.0, 0.0, -0.0, 0.5, "Neutral", "train"),
    ]
    text = F.format_sims_labels(rows)
    assert text.splitlines()[1] == 'video_0007,0003,"hao ba, wo ""hen"" kaixin。",0.6,0.4,1.0,-0.2,Positive,test'
    assert F.parse_sims_labels(write(tmp_path, "label.csv", text)) == rows
    assert [F.sims_annotation(v) for v in (-0.2, 0.0, 0.4)] == ["Negative", "Neutral", "Positive"]
