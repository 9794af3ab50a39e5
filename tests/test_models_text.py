"""Tests of the offline text encoder: MiniLM from its wheel, missing-weight errors, truncation, tiny random init,
and the random-init stand-ins of albert-base-v2 and bert-base-chinese (paper FE2E with one)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emolib.models.text import MissingWeightsError, TextEncoder, resolve_text_model

SENTENCES = ["I am so happy to see you!", "I'm really glad you came.", "The train leaves at noon."]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return TextEncoder("minilm").eval()


def test_minilm_loads_offline_and_gives_cls_of_width_384(minilm: TextEncoder) -> None:
    assert minilm.source.kind == "wheel" and minilm.hidden_size == 384
    with torch.no_grad():
        out = minilm(SENTENCES)
    assert out.shape == (3, 384) and torch.isfinite(out).all()


def test_minilm_aliases_resolve_to_the_wheel() -> None:
    paths = {resolve_text_model(n).location for n in ("minilm", "all-MiniLM-L6-v2",
                                                      "sentence-transformers/all-MiniLM-L6-v2")}
    assert len(paths) == 1
    assert (Path(paths.pop()) / "model.safetensors").is_file()


def test_cls_is_position_zero_of_a_direct_transformers_run(minilm: TextEncoder) -> None:
    from transformers import AutoModel, AutoTokenizer

    location = resolve_text_model("minilm").location
    tok = AutoTokenizer.from_pretrained(location, local_files_only=True)
    model = AutoModel.from_pretrained(location, local_files_only=True).eval()
    enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=100, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).last_hidden_state[:, 0]
        got = minilm(SENTENCES)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_mean_pooling_reproduces_pretrained_sentence_similarities() -> None:
    # Real weights, not a random init: the published all-MiniLM-L6-v2 embeddings give these cosines
    # (measured with sentence-transformers: 0.433 and 0.059).
    enc = TextEncoder("all-MiniLM-L6-v2", pooling="mean").eval()
    with torch.no_grad():
        emb = F.normalize(enc(SENTENCES), dim=-1)
    assert float(emb[0] @ emb[1]) == pytest.approx(0.433, abs=0.002)
    assert float(emb[0] @ emb[2]) == pytest.approx(0.059, abs=0.002)


def test_max_length_truncates_and_pads(minilm: TextEncoder) -> None:
    long_text = " ".join(["emotion"] * 300)
    minilm.max_length = 16
    try:
        with torch.no_grad():
            out = minilm([long_text, "short"], return_tokens=True)
        assert out.tokens.shape == (2, 16, 384)
        assert out.attention_mask.sum(dim=1).tolist() == [16, 3]  # [CLS] short [SEP]
        minilm.padding = "max_length"
        with torch.no_grad():
            fixed = minilm(["short"], return_tokens=True)
        assert fixed.tokens.shape == (1, 16, 384)
        # Masked padding does not change the [CLS] state.
        torch.testing.assert_close(fixed.pooled[0], out.pooled[1], rtol=1e-4, atol=1e-4)
    finally:
        minilm.max_length, minilm.padding = 100, "longest"


def test_missing_hub_id_raises_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "emolib-tests/no-such-text-model"
    with pytest.raises(MissingWeightsError) as info:
        TextEncoder(name)
    message = str(info.value)
    assert name in message
    assert f"huggingface-cli download {name}" in message
    assert "HF_HOME" in message and "local directory" in message


def test_missing_local_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="does not exist"):
        TextEncoder(str(tmp_path / "absent"))
    with pytest.raises(MissingWeightsError, match="loadable transformers checkpoint"):
        TextEncoder(str(tmp_path))  # exists but is empty


def test_local_directory_with_partial_weights_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tiny = TextEncoder.tiny_random()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in weights if "encoder.layer.0" in k)
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match="refusing to train a partly random encoder"):
        TextEncoder(str(tmp_path))


def test_local_directory_loads(tmp_path: Path) -> None:
    tiny = TextEncoder.tiny_random(seed=3)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = TextEncoder(str(tmp_path)).eval()
    assert loaded.source.kind == "directory" and loaded.hidden_size == 32
    with torch.no_grad():
        torch.testing.assert_close(loaded(SENTENCES), tiny.eval()(SENTENCES))


def test_tiny_random_is_explicit_deterministic_and_trainable() -> None:
    a, b = TextEncoder.tiny_random(seed=1), TextEncoder.tiny_random(seed=1)
    assert a.source.kind == "random-init" and "tiny-random" in a.source.name
    assert a.hidden_size == 32
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    a(SENTENCES).sum().backward()
    assert all(p.grad is not None for p in a.parameters())


def test_rejects_a_bare_string_and_bad_options() -> None:
    tiny = TextEncoder.tiny_random()
    with pytest.raises(TypeError, match="list of transcript strings"):
        tiny("just one string")
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder.tiny_random(pooling="max")
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder.tiny_random(max_length=1)


# ------------------------------------------------------------------------------------ random-init stand-ins

# The real checkpoints' parameters (transformers AlbertModel / BertModel from their config.json), without the
# pooler that TextEncoder never builds; with it: 11,683,584 (albert-base-v2) and 102,267,648 (bert-base-chinese).
STAND_IN_PARAMS = {"albert-base-v2": 11_092_992, "bert-base-chinese": 101_677_056}
STAND_IN_VOCAB = {"albert-base-v2": 30000, "bert-base-chinese": 21128}
# English, Chinese, words whose MiniLM ids lie above 21128 ("brasil incentives") and Korean, whose decomposed
# jamo pieces lie above 30000: both stand-ins must fold them into their vocabularies.
STAND_IN_TEXTS = SENTENCES + ["今天天气很好，我很开心！", "这个消息太糟糕了。", "brasil incentives", "정말 행복해요"]


@pytest.fixture(scope="module")
def stand_ins() -> dict[str, TextEncoder]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return {name: TextEncoder("stand-in:" + name).eval() for name in STAND_IN_PARAMS}


@pytest.mark.parametrize("name", sorted(STAND_IN_PARAMS))
def test_stand_ins_have_the_real_architecture_and_are_marked(stand_ins: dict[str, TextEncoder], name: str) -> None:
    enc = stand_ins[name]
    assert enc.source.kind == "stand-in" and name in enc.source.name and "random-init" in enc.source.name
    assert name in repr(enc) and "stand-in" in repr(enc)
    assert enc.hidden_size == 768 and enc.model.config.num_hidden_layers == 12
    assert enc.model.config.num_attention_heads == 12 and enc.model.config.intermediate_size == 3072
    assert enc.model.config.max_position_embeddings == 512
    assert enc.model.get_input_embeddings().num_embeddings == STAND_IN_VOCAB[name] == len(enc.tokenizer)
    assert sum(p.numel() for p in enc.parameters()) == STAND_IN_PARAMS[name]
    assert type(enc.model).__name__ == ("AlbertModel" if name.startswith("albert") else "BertModel")
    if name.startswith("albert"):
        assert enc.model.config.embedding_size == 128 and enc.model.config.hidden_dropout_prob == 0.0


@pytest.mark.parametrize("name", sorted(STAND_IN_PARAMS))
def test_stand_ins_fold_token_ids_into_their_vocabulary(stand_ins: dict[str, TextEncoder], name: str) -> None:
    enc = stand_ins[name]
    vocab = STAND_IN_VOCAB[name]
    raw = enc.tokenizer.tokenizer(STAND_IN_TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert int(raw.max()) >= vocab  # the MiniLM tokenizer's ids exceed the stand-in's vocabulary ...
    ids = enc.tokenize(STAND_IN_TEXTS)["input_ids"]
    assert int(ids.max()) < vocab and int(ids.min()) >= 0  # ... and are folded into it
    kept = raw < vocab
    assert torch.equal(ids[kept], raw[kept])  # ids the model knows, [CLS]/[SEP]/[PAD]/[UNK] included, are kept
    special = set(enc.tokenizer.all_special_ids)
    assert not any(int(i) in special for i in ids[~kept])  # a folded word never becomes a special token
    assert enc.tokenizer(["brasil incentives"])["input_ids"][0] == [int(i) for i in ids[len(SENTENCES) + 2, :4]]
    copied = copy.deepcopy(enc.tokenizer)  # trainers copy models (best checkpoint, SWA): the wrapper survives it
    assert len(copied) == vocab and torch.equal(copied(STAND_IN_TEXTS, padding=True, return_tensors="pt")[
        "input_ids"], ids)
    with torch.no_grad():
        out = enc(STAND_IN_TEXTS, return_tokens=True)
    assert out.pooled.shape == (len(STAND_IN_TEXTS), 768) and torch.isfinite(out.tokens).all()
    # Chinese is split into one token per character, as bert-base-chinese's tokenizer does.
    assert int(out.attention_mask[len(SENTENCES)].sum()) == len("今天天气很好，我很开心！") + 2


def test_stand_ins_are_random_inits_from_the_global_rng() -> None:
    torch.manual_seed(5)
    a = TextEncoder("stand-in:albert-base-v2")
    torch.manual_seed(5)
    b = TextEncoder("stand-in:albert/albert-base-v2")  # the hub id with its organisation names the same model
    torch.manual_seed(6)
    c = TextEncoder("stand-in:albert-base-v2")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.model.get_input_embeddings().weight, c.model.get_input_embeddings().weight)
    a.train()(SENTENCES).sum().backward()
    assert all(p.grad is not None for p in a.parameters())


def test_stand_in_names_resolve_offline_and_unknown_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_text_model("stand-in:bert-base-chinese")
    assert source.kind == "stand-in" and source.location == resolve_text_model("minilm").location
    with pytest.raises(ValueError, match="known stand-ins: stand-in:albert-base-v2, stand-in:bert-base-chinese"):
        resolve_text_model("stand-in:roberta-base")
    with pytest.raises(ValueError, match="no random-initialised stand-in is known for 'roberta-base'"):
        TextEncoder("stand-in:roberta-base")


def test_paper_fe2e_builds_and_runs_with_the_albert_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import contract_batch

    from emolib.models import build_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = build_model("fe2e", "paper", num_outputs=6, text_model="stand-in:albert-base-v2").eval()
    assert model.text_encoder.source.kind == "stand-in" and "albert-base-v2" in model.text_encoder.source.name
    assert model.t_out.in_features == 768  # the paper's head on ALBERT-base's [CLS]
    with torch.no_grad():
        out = model(contract_batch(0, face_size=64))
    assert out["logits"].shape == (3, 6) and all(torch.isfinite(v).all() for v in out.values())
