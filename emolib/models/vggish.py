"""VGGish (Hershey et al., ICASSP 2017) as EmoMBT uses it: log-mel examples computed inside the model, then the
VGG-style CNN, 128-d per 0.96 s example (``khanhnd185/EmoMBT: src/datasets.py`` and ``src/models/mbt.py``).

EmoMBT feeds ``torchvggish.vggish_input.wavfile_to_examples`` output to ``vggish(postprocess=False)``. Both
halves are rebuilt here so that the waveform of the batch contract goes in and no file is read:

* ``VggishLogMel``: 16 kHz waveform -> STFT magnitude (25 ms periodic-Hann window, 10 ms hop, 512-point FFT,
  no centring) -> 64 mel bands 125-7500 Hz with VGGish's own filterbank -> ``log(mel + 0.01)`` -> non-overlapping
  96-frame (0.96 s) examples of 96x64.
* ``VGGish``: conv 64-M-128-M-256-256-M-512-512-M (3x3, ReLU, 2x2 max-pool), then FC 12288 -> 4096 -> 4096 -> 128,
  each followed by ReLU; no PCA/quantisation post-processing. Parameter names and the flatten order match
  torchvggish, so its AudioSet checkpoint (``vggish-10086976.pth``) loads with ``load_vggish_weights``.

Two deliberate differences from the reference pipeline:

* torchvggish turns a clip shorter than 0.96 s into zero examples, which breaks EmoMBT's sequence code (a
  QUIRK). Here such a clip is zero-padded to the shortest waveform that yields one full example (15 600 samples,
  0.975 s), so every utterance has at least one example.
* The filterbank is VGGish's (triangles linear in mel, DC bin zeroed), not ``torchaudio.functional.
  melscale_fbanks`` (triangles linear in Hz): the AudioSet weights were trained on the former.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emolib.models.blocks import waveform_batch

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # next power of two above the window, as vggish computes it
N_MELS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames, no overlap between examples
MIN_SAMPLES = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # 15 600: one full example

VGGISH_WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"

# (conv widths of the four stages, FC widths); stage k has len(widths[k]) convs followed by a 2x2 max-pool.
VGGISH_CONFIGS: dict[str, dict[str, tuple]] = {
    "paper": {"stages": ((64,), (128,), (256, 256), (512, 512)), "fc": (4096, 4096, 128)},
    "tiny": {"stages": ((8,), (16,), (16, 16), (32, 32)), "fc": (64, 64, 32)},
}


def hertz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale, as VGGish uses it: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def vggish_mel_matrix(
    n_freqs: int = FFT_SIZE // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    n_mels: int = N_MELS,
    f_min: float = MEL_MIN_HZ,
    f_max: float = MEL_MAX_HZ,
) -> Tensor:
    """(n_freqs, n_mels) filterbank that post-multiplies a magnitude spectrogram, VGGish's definition.

    Band edges are ``n_mels + 2`` points evenly spaced in mel between ``f_min`` and ``f_max``; each FFT bin's
    weight in band i rises and falls linearly *in mel* between the band's edges; the DC bin gets weight 0.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= f_min < f_max <= {nyquist}, got {f_min}, {f_max}")
    bins_mel = hertz_to_mel(torch.linspace(0.0, nyquist, n_freqs, dtype=torch.float64))
    edges = torch.linspace(
        float(hertz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
        float(hertz_to_mel(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0
    return weights.float()


class VggishLogMel(nn.Module):
    """Waveforms (B, T_max) + lengths (B,) -> log-mel examples (sum_i E_i, 1, 96, 64) + E (B,).

    The STFT is ``torchaudio.functional.spectrogram`` with a 400-sample window inside a 512-point frame. torch
    places a short window in the middle of the frame, so the batch is zero-padded by 56 samples on both sides:
    frame t then windows samples [160 t, 160 t + 400) of the utterance, exactly the frame VGGish takes, and the
    magnitude of the zero-padded FFT does not depend on where in the frame the window sits. Frames past an
    utterance's own count ``1 + (L - 400) // 160`` are dropped, so the zero padding of the batch never leaks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WINDOW_SAMPLES, periodic=True), persistent=False)
        self.register_buffer("mel", vggish_mel_matrix(), persistent=False)

    @staticmethod
    def padded_lengths(lengths: Tensor) -> Tensor:
        """Utterance lengths after padding short clips up to one full example."""
        return lengths.clamp(min=MIN_SAMPLES)

    @classmethod
    def example_counts(cls, lengths: Tensor) -> Tensor:
        frames = 1 + torch.div(cls.padded_lengths(lengths) - WINDOW_SAMPLES, HOP_SAMPLES, rounding_mode="floor")
        return torch.div(frames, EXAMPLE_FRAMES, rounding_mode="floor")

    def log_mel(self, audio: Tensor) -> Tensor:
        """(B, T) waveforms, T >= 400 -> (B, 1 + (T - 400) // 160, 64) log-mel frames."""
        import torchaudio.functional as AF  # deferred: only audio models pay for importing torchaudio

        side = (FFT_SIZE - WINDOW_SAMPLES) // 2
        spec = AF.spectrogram(
            F.pad(audio, (side, side)),
            pad=0,
            window=self.window,
            n_fft=FFT_SIZE,
            hop_length=HOP_SAMPLES,
            win_length=WINDOW_SAMPLES,
            power=1.0,
            normalized=False,
            center=False,
        )  # (B, 257, frames)
        return torch.log(spec.transpose(1, 2) @ self.mel + LOG_OFFSET)

    def forward(self, audio: Tensor, audio_lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        audio, lengths = waveform_batch(audio, audio_lengths)
        # Samples past an utterance's own length must be silent for the short-clip padding to be zeros.
        valid = torch.arange(audio.shape[1], device=audio.device).unsqueeze(0) < lengths.unsqueeze(1)
        audio = audio * valid
        if audio.shape[1] < MIN_SAMPLES:
            audio = F.pad(audio, (0, MIN_SAMPLES - audio.shape[1]))
        counts = self.example_counts(lengths)
        max_examples = int(counts.max()) if counts.numel() else 0
        # log(mel + 0.01) of small magnitudes needs float32; keep mixed precision out of the front end.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            logmel = self.log_mel(audio)[:, : max_examples * EXAMPLE_FRAMES]
        examples = logmel.reshape(audio.shape[0], max_examples, EXAMPLE_FRAMES, N_MELS)
        keep = torch.arange(max_examples, device=audio.device).unsqueeze(0) < counts.unsqueeze(1)
        return examples[keep].unsqueeze(1), counts


class VGGish(nn.Module):
    """The VGGish CNN + embedding MLP on (N, 1, 96, 64) log-mel examples -> (N, embedding_dim).

    ``features`` and ``embeddings`` are ``nn.Sequential`` with torchvggish's layout (conv, ReLU, ..., max-pool),
    and the conv map is flattened in (H, W, C) order as the TensorFlow original does, so AudioSet weights load.
    """

    def __init__(self, stages: Sequence[Sequence[int]] = VGGISH_CONFIGS["paper"]["stages"],
                 fc: Sequence[int] = VGGISH_CONFIGS["paper"]["fc"]) -> None:
        super().__init__()
        if len(stages) != 4 or any(len(s) == 0 for s in stages) or len(fc) == 0:
            raise ValueError(f"VGGish needs 4 non-empty conv stages and at least one FC layer, got {stages}, {fc}")
        layers: list[nn.Module] = []
        channels = 1
        for stage in stages:
            for width in stage:
                layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(width)
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        height, width = EXAMPLE_FRAMES // 16, N_MELS // 16
        dense: list[nn.Module] = []
        width_in = channels * height * width
        for width_out in fc:
            dense += [nn.Linear(width_in, int(width_out)), nn.ReLU(inplace=True)]
            width_in = int(width_out)
        self.embeddings = nn.Sequential(*dense)
        self.embedding_dim = width_in

    def forward(self, examples: Tensor) -> Tensor:
        if examples.dim() != 4 or examples.shape[1:] != (1, EXAMPLE_FRAMES, N_MELS):
            raise ValueError(f"expected log-mel examples (N, 1, {EXAMPLE_FRAMES}, {N_MELS}), "
                             f"got {tuple(examples.shape)}")
        maps = self.features(examples)
        return self.embeddings(maps.permute(0, 2, 3, 1).flatten(1))


def load_vggish_weights(model: VGGish, path: str | Path) -> None:
    """Load torchvggish's AudioSet checkpoint (a state_dict of ``features.*`` / ``embeddings.*``) into ``model``.

    PCA post-processing tensors, if present in the file, are ignored (EmoMBT uses ``postprocess=False``).
    """
    from emolib.models.text import MissingWeightsError

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: VGGish AudioSet weights not found. Download {VGGISH_WEIGHTS_URL} on a machine with internet, "
            "copy it here and pass audio_weights=/path/to/vggish-10086976.pth (or audio_weights='random' to train "
            "VGGish from scratch)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a VGGish state_dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    wanted = {k: v for k, v in state.items() if k.startswith(("features.", "embeddings."))}
    own = model.state_dict()
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    wrong = sorted(k for k in set(own) & set(wanted) if tuple(own[k].shape) != tuple(wanted[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: does not match this VGGish (missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {wrong[:4]}); the AudioSet weights fit only the 'paper' VGGish configuration"
        )
    model.load_state_dict(wanted)

