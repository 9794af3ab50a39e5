"""emolib.viz: the data notebook's spectrogram shows the models' own audio front-end (FE2E's MelPieces), with no
warning, for cached clips and for a clip shorter than one STFT window."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch

from emolib.data.cache import SAMPLE_RATE, Cache
from emolib.models.blocks import MelPieces
from emolib.viz import spectrogram_figure

matplotlib.use("Agg")


def _image(fig) -> np.ndarray:
    return np.asarray(fig.axes[1].images[0].get_array())


def test_spectrogram_is_the_front_end_mel(tiny_caches) -> None:
    import matplotlib.pyplot as plt

    cache = Cache(tiny_caches["iemocap"])
    uid = cache.uids()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchaudio's empty-filterbank warning is the paper's setting, not news
        fig = spectrogram_figure(cache, uid)
    front_end = MelPieces(sample_rate=SAMPLE_RATE)
    expected = front_end.mel(torch.from_numpy(cache.load(uid).audio_float())).numpy()
    image = _image(fig)
    assert image.shape == expected.shape and image.shape[0] == front_end.n_mels
    np.testing.assert_allclose(image, 10 * np.log10(expected + 1e-10), rtol=1e-5, atol=1e-4)
    plt.close(fig)


def test_a_clip_shorter_than_one_window_is_drawn() -> None:
    import matplotlib.pyplot as plt

    audio = np.zeros(100, dtype=np.float32)
    rec = SimpleNamespace(audio_float=lambda: audio, labels=np.array([1.0]), meta={"text": "hi"})
    cache = SimpleNamespace(uids=lambda: ["u"], load=lambda uid: rec, label_names=["happy"], task="multilabel")
    fig = spectrogram_figure(cache)
    assert _image(fig).shape == (MelPieces().n_mels, 1)
    plt.close(fig)
    with pytest.raises(RuntimeError):  # the uncentred STFT itself cannot take it: the padding is what draws it
        MelPieces().mel(torch.from_numpy(audio))
