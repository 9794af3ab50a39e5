"""emolib.evaluate.encoder_memo: encoder outputs answered by the digest of their arguments while evaluating."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emolib.evaluate.encoder_memo import EncoderMemo, call_digest
from emolib.models.input_memo import tensor_bytes


class Counting(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(width, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        self.calls += 1
        return self.lin(x)


class Words(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, texts, return_tokens: bool = False):
        self.calls += 1
        out = torch.tensor([[float(len(t))] for t in texts])
        return (out, out * 2) if return_tokens else out


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = Counting()
        self.text_encoder = Words()
        self.head = Counting(2)  # not an encoder: never memoised

    def modality_encoders(self) -> dict[str, str]:
        return {"visual": "visual", "text": "text_encoder"}

    def forward(self, faces, texts):
        return self.head(self.visual(faces)) + self.text_encoder(texts).sum()


def test_digest_tells_content_dtype_shape_and_strings_apart() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    same = call_digest((x.clone(),), {})
    assert call_digest((x,), {}) == same
    assert call_digest((x.reshape(3, 2),), {}) != same
    assert call_digest((x.double(),), {}) != same
    y = x.clone()
    y[1, 2] += 1e-6
    assert call_digest((y,), {}) != same
    assert call_digest((["a b", "c"],), {}) != call_digest((["a", "b c"],), {})
    assert call_digest((["a"],), {"return_tokens": True}) != call_digest((["a"],), {"return_tokens": False})
    assert call_digest((x, [1, 2]), {}) != call_digest((x, [2, 1]), {})
    assert call_digest((x.bfloat16(),), {}) != call_digest((x.half(),), {})  # any dtype, by its bytes


def test_memo_answers_recorded_calls_and_computes_the_rest() -> None:
    torch.manual_seed(0)
    model = Model().eval()
    faces, other = torch.randn(4, 3), torch.randn(4, 3)
    with torch.no_grad():
        plain = model(faces, ["a", "bb"])
        with EncoderMemo(model) as memo:
            assert model(faces, ["a", "bb"]).equal(plain)  # recorded
            memo.recording = False
            assert model(faces, ["a", "bb"]).equal(plain)  # both encoders answered
            assert model(other, ["a", "bb"]).shape == plain.shape  # visual computed, text answered
            model(other, ["a", "bb"])  # not recorded: computed again
    assert (memo.hits, memo.misses) == (4, 4)
    assert model.visual.calls == 4 and model.text_encoder.calls == 2 and model.head.calls == 5
    # outside the context the modules are themselves again
    assert "forward" not in model.visual.__dict__ and "forward" not in model.text_encoder.__dict__
    model(faces, ["a", "bb"])
    assert model.visual.calls == 5 and model.text_encoder.calls == 3


def test_memo_keeps_tuples_caps_its_bytes_and_skips_what_it_cannot_key() -> None:
    model = Model().eval()
    with EncoderMemo(model, max_bytes=8) as memo:
        pair = model.text_encoder(["abc"], return_tokens=True)
        assert model.text_encoder(["abc"], return_tokens=True) is pair
        assert memo.bytes == tensor_bytes(pair) == 8
        model.text_encoder(["abcd"], return_tokens=True)  # over the cap: computed, not kept
        model.text_encoder(["abcd"], return_tokens=True)
        model.visual(torch.zeros(1, 3), lengths=object())  # an argument without a digest
        model.visual(torch.zeros(1, 3), lengths=object())
    assert model.text_encoder.calls == 3 and model.visual.calls == 2 and memo.hits == 1
    assert tensor_bytes({"a": torch.zeros(1)}) is None


def test_models_without_declared_encoders_run_unchanged() -> None:
    plain = nn.Linear(2, 2)
    with EncoderMemo(plain) as memo:
        plain(torch.zeros(1, 2))
    assert memo.modules == {} and memo.hits == memo.misses == 0


@pytest.mark.parametrize("name, expected", [("fe2e", {"text": "text_encoder", "visual": "visual", "audio": "audio"}),
                                            ("audio-only", {"audio": "audio"}),
                                            ("e2emal", {"visual": "visual_lfe", "audio": "audio_lfe"})])
def test_registered_models_name_their_encoders(name, expected) -> None:
    from emolib.evaluate.efficiency import build_for_efficiency

    model, _ = build_for_efficiency(name, "tiny")
    assert model.modality_encoders() == expected
    for sub in expected.values():
        model.get_submodule(sub)
