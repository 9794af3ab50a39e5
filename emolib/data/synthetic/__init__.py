"""Synthetic miniature copies of the IEMOCAP, CMU-MOSEI and CH-SIMS raw releases, in the real formats.

``synthesize(dataset, root, seed=..., size=...)`` writes a release that the real-data preprocessing reads
unchanged, in the layouts of the raw releases (IEMOCAP and CMU-MOSEI as read by
``preprocessing/preprocess_iemocap.ipynb`` and ``preprocessing/preprocess_mosei.ipynb`` of
``wenliangdai/Multimodal-End2end-Sparse``; CH-SIMS as laid out for ``thuiar/MMSA``: its README and
``thuiar/MMSA-FET`` ``src/MSA_FET/dataset.py``) and file formats (``emolib.data.formats``):

* ``iemocap``: ``Session{n}/dialog/avi/DivX/<dialog>.avi`` (MPEG-4 part 2, fourcc DIVX, 29.97 fps, 640x240 =
  two 320x240 halves), ``dialog/wav/<dialog>.wav`` (16 kHz stereo int16), ``dialog/EmoEvaluation/<dialog>.txt``,
  ``dialog/transcriptions/<dialog>.txt``. Dialogs ``Ses01F_impro01``, ``Ses01M_impro01``, ``Ses01F_script01_1``
  ...; utterances ``<dialog>_F000`` / ``_M000`` numbered per speaker. The actor whose gender letter equals the
  session letter sits on the left half and speaks into channel 0 (Dai's ``use_left`` rule), the other on the
  right half / channel 1; the other channel carries crosstalk at -18 dB.
* ``mosei``: ``Videos/Full/Combined/<vid>.mp4`` (H.264 30 fps 320x240 + AAC), ``Audio/WAV_16000/<vid>.wav``
  (16 kHz mono int16), ``Transcript/Combined/<vid>.txt``, ``Labels/Batch_*_batch_results.csv`` (three MTurk
  rows per clip).
* ``sims``: ``label.csv`` and ``Raw/<video_id>/<clip_id>.mp4`` (H.264 25 fps 320x240 + AAC 16 kHz mono).
* ``synthetic_manifest.json`` at the root: seed, size, the design below, every clip's ground truth and latent
  cues, and the sha256 of every file (the provenance of the release).

Generative model (one clip = one utterance)
-------------------------------------------
1. Label. IEMOCAP: a 3-letter code allocated from ``SYNTH_DESIGN['iemocap']['label_weights']`` (largest
   remainder, then shuffled, so small releases stay balanced); ``xxx``/``sur``/``oth`` utterances exist and are
   dropped by the 6-class protocol. MOSEI: a set S of 0, 1 or 2 emotions (counts allocated from
   ``n_emotion_weights``, emotions drawn from ``emotion_weights``); three annotators each mark every emotion of
   S with probability 0.7 and intensity 1-3 (at least one marks it), never an emotion outside S, so Dai's
   aggregation (sum > 0) returns exactly S while raw rows disagree. CH-SIMS: M on the 0.2 grid of [-1, 1]
   from ``m_weights`` plus a negative flavour (sadness or anger); ``mode`` allocated 60/20/20.
2. Cue per modality (visual, audio, text), independently: with probability ``informative`` the modality shows
   the label (IEMOCAP: its expression; MOSEI: the emotions of S one after the other, first half / second
   half of the clip, or neutral for S empty; SIMS: sentiment M), with ``missing`` it shows neutral (SIMS:
   sentiment 0), with ``contradict`` it shows another label (IEMOCAP: a uniformly drawn other 6-class
   expression; MOSEI: an emotion outside S; SIMS: sentiment -M, or +-U(0.4, 0.8) for M = 0). IEMOCAP ``xxx``
   shows a random 6-class expression per modality (no majority), ``oth`` shows fear or disgust. CH-SIMS
   ``label_T/A/V`` are the displayed sentiment of that modality plus N(0, 0.08) annotator noise on the 0.2
   grid, so they differ from M where the cue is missing or contradicting (and, through the noise, a little
   elsewhere).
3. Rendering of a shown expression with intensity U(0.7, 1.1) (SIMS: |sentiment| x U(0.85, 1.15)) plus per
   clip jitter:
   * visual: a drawn head (skin ellipse, hair, ears, neck/shoulders, eyes with iris and pupil, brows, nose,
     lips) whose mouth curvature/openness/width, brow tilt/height and eye openness follow ``EXPRESSIONS``;
     per clip N(0, 0.08) parameter jitter, face size x U(0.92, 1.08), head tilt N(0, 4 deg); per frame a
     slow drift (6-14 px) and head motion (2-5 px); the mouth opens with the syllable envelope of the audio.
     facenet-pytorch MTCNN detects these faces (checked by the tests).
   * audio: a voiced source (harmonics of f0 with spectral tilt, shaped by vowel formants per syllable, plus
     breath noise) whose pitch level/range/slope, energy, syllable rate, brightness, breathiness and vibrato
     follow the expression (speaker f0: F 185-235 Hz, M 100-135 Hz); per clip jitter of pitch (N(0, 1) st),
     rate (x e^N(0, 0.08)), energy (N(0, 1.5) dB), range; background noise of 0.002-0.008 RMS.
   * text: a template sentence with an emotion word (several synonyms per emotion, intensity adverbs) plus
     neutral filler; a neutral cue gives filler only. CH-SIMS text is pinyin by default (``sims_script``;
     ``"hanzi"`` writes Chinese characters, which English-vocabulary tokenizers map to [UNK]).
4. Everything is drawn from ``numpy.random.default_rng`` seeded by (seed, dataset, stream), so a seed gives
   byte-identical text, CSV and wav files; the video encoders run single-threaded and were checked to be
   deterministic too (tests compare label/text/wav bytes only).

Because the three cues are independent given the label, fusing modalities beats the best single one; the
design numbers are exposed (``SYNTH_DESIGN``, ``informative_probability``) and ``cue_accuracy`` turns them
into the accuracy of the best decision rule that sees which expression each cue shows, an upper bound for a
model given those modalities, so integration tests can derive margins instead of tuning them.
"""

from __future__ import annotations

from emolib.data.synthetic.bounds import chance_accuracy, cue_accuracy
from emolib.data.synthetic.design import (
    DATASETS,
    INTENSITY_RANGE,
    MODALITIES,
    SAMPLE_RATE,
    SIMS_SCRIPTS,
    SIZE_LAYOUT,
    SIZES,
    SYNTH_DESIGN,
    CueDesign,
    cue_design,
    informative_probability,
)
from emolib.data.synthetic.expressions import (
    ADVERBS_EN,
    ADVERBS_ZH,
    EXPRESSIONS,
    FILLERS_EN,
    FILLERS_ZH,
    IEMOCAP_EXPRESSION,
    IEMOCAP_POOL,
    MOSEI_POOL,
    TEMPLATES_EN,
    WORDS_EN,
    WORDS_ZH,
    FaceParams,
    VoiceParams,
)
from emolib.data.synthetic.face import Colour, Sprite, YuvFrame, render_head, rgb_to_yuv
from emolib.data.synthetic.plan import Actor, ClipPlan, Display, ReleasePlan, VideoPlan, plan_release
from emolib.data.synthetic.plan import _make_actor as _make_actor  # used by tests/test_synthetic.py
from emolib.data.synthetic.release import GENERATOR, GENERATOR_VERSION, MANIFEST_NAME, read_manifest, synthesize
from emolib.data.synthetic.render import write_wav
from emolib.data.synthetic.voice import synthesize_speech

__all__ = [
    "ADVERBS_EN", "ADVERBS_ZH", "DATASETS", "EXPRESSIONS", "FILLERS_EN", "FILLERS_ZH", "GENERATOR",
    "GENERATOR_VERSION", "IEMOCAP_EXPRESSION", "IEMOCAP_POOL", "INTENSITY_RANGE", "MANIFEST_NAME", "MODALITIES",
    "MOSEI_POOL", "SAMPLE_RATE", "SIMS_SCRIPTS", "SIZES", "SIZE_LAYOUT", "SYNTH_DESIGN", "TEMPLATES_EN", "WORDS_EN",
    "WORDS_ZH", "Actor", "ClipPlan", "Colour", "CueDesign", "Display", "FaceParams", "ReleasePlan", "Sprite",
    "VideoPlan", "VoiceParams", "YuvFrame", "chance_accuracy", "cue_accuracy", "cue_design",
    "informative_probability", "plan_release", "read_manifest", "render_head", "rgb_to_yuv", "synthesize",
    "synthesize_speech", "write_wav",
]
