"""Rendering of one video (frames + audio): face tracks per slot, backdrop, the video encoder and the wav writer."""

from __future__ import annotations

import colorsys
import math
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emolib import io as eio
from emolib.data.synthetic.design import SAMPLE_RATE, SYNTH_DESIGN
from emolib.data.synthetic.face import Sprite, YuvFrame, _jittered_face, _paste, render_head
from emolib.data.synthetic.plan import Actor, ClipPlan, Display, ReleasePlan, VideoPlan, _choice, _rng
from emolib.data.synthetic.voice import _jittered_voice, synthesize_speech


@dataclass
class _Track:
    """Per frame: which sprite each slot shows and where its face centre is."""

    sprites: list[Sprite]
    index: np.ndarray  # (n_frames,) int
    x: np.ndarray
    y: np.ndarray


def _render_audio(rng: np.random.Generator, video: VideoPlan) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Channels (slots, samples) float32 and the syllable envelope of every clip."""
    n = int(round(video.duration * SAMPLE_RATE))
    slots = len(video.actors)
    voice = np.zeros((slots, n), np.float32)
    envelopes = {}
    for clip in video.clips:
        actor = video.actors[clip.slot]
        voices = [_jittered_voice(rng, e, i) for e, i in clip.displays["audio"].shown]
        signal, env = synthesize_speech(rng, voices, clip.end - clip.start, actor.f0, actor.gain)
        a = int(round(clip.start * SAMPLE_RATE))
        b = min(n, a + len(signal))
        voice[clip.slot, a:b] += signal[: b - a]
        envelopes[clip.uid] = env
    if slots == 2:  # each lapel microphone also hears the other actor
        voice = voice + 0.125 * voice[::-1]
    noise_level = rng.uniform(0.002, 0.008, size=(slots, 1)).astype(np.float32)
    noise = rng.standard_normal((slots, n)).astype(np.float32) * noise_level
    return np.clip(voice + noise, -1.0, 1.0), envelopes


def _slot_tracks(rng: np.random.Generator, video: VideoPlan, design: dict, envelopes: dict[str, np.ndarray],
                 n_frames: int) -> list[_Track]:
    fps = float(design["fps"])
    slot_w, height = design["frame_size"][0] // design["slots"], design["frame_size"][1]
    times = np.arange(n_frames) / fps
    tracks = []
    for slot, actor in enumerate(video.actors):
        idle_size = actor.face_w * rng.uniform(0.95, 1.05)
        sprites = [render_head(actor, _jittered_face(rng, "neutral", 0.0), idle_size, float(rng.normal(0, 3)))]
        index = np.zeros(n_frames, int)
        for clip in video.clips:
            f0 = int(math.ceil(clip.start * fps))
            f1 = min(n_frames, int(math.floor(clip.end * fps)) + 1)
            if f1 <= f0:
                continue
            pose = (actor.face_w * rng.uniform(0.92, 1.08), float(np.clip(rng.normal(0, 4), -9, 9)),
                    (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))))
            first = len(sprites)
            if clip.slot == slot:
                sprites += _speaker_sprites(rng, actor, clip.displays["visual"], *pose)
                index[f0:f1] = first + _speaker_sprite_index(clip, envelopes[clip.uid], times[f0:f1] - clip.start)
            else:  # the listener shows a mild expression that carries no label information
                mood = _choice(rng, ("neutral", "happiness", "sadness", "frustration", "surprise"))
                sprites.append(render_head(actor, _jittered_face(rng, mood, float(rng.uniform(0, 0.35))), *pose))
                index[f0:f1] = first
        centre_x = slot * slot_w + slot_w / 2 + rng.uniform(-14, 14)
        centre_y = height / 2 - 6 + rng.uniform(-8, 8)
        x = centre_x + _wander(rng, times, (6, 14), (6, 15)) + _wander(rng, times, (2, 5), (1.0, 2.5))
        y = centre_y + _wander(rng, times, (3, 8), (6, 15)) + _wander(rng, times, (1, 3), (1.0, 2.5))
        # Even positions keep the 4:2:0 chroma of the sprites aligned with their luma.
        tracks.append(_Track(sprites, index, 2 * np.round(x / 2).astype(int), 2 * np.round(y / 2).astype(int)))
    return tracks


_TALK_PHASES = 3  # mouth closed / half open / open, chosen per frame from the syllable envelope


def _speaker_sprites(rng: np.random.Generator, actor: Actor, display: Display, size: float, tilt: float,
                     gaze: tuple[float, float]) -> list[Sprite]:
    """``_TALK_PHASES`` sprites per shown expression segment, in segment order."""
    sprites = []
    for expression, intensity in display.shown:
        face = _jittered_face(rng, expression, intensity)
        for phase in range(_TALK_PHASES):
            talking = replace(face, mouth_open=min(1.2, face.mouth_open + 0.22 * phase))
            sprites.append(render_head(actor, talking, size, tilt, gaze))
    return sprites


def _speaker_sprite_index(clip: ClipPlan, env: np.ndarray, frame_t: np.ndarray) -> np.ndarray:
    """Per frame (times relative to the clip start): which of the clip's speaker sprites to show."""
    samples = np.clip((frame_t * SAMPLE_RATE).astype(int), 0, len(env) - 1)
    phase = np.digitize(env[samples], [0.25, 0.65])
    n_segments = len(clip.displays["visual"].shown)
    segment = np.minimum((frame_t / (clip.end - clip.start) * n_segments).astype(int), n_segments - 1)
    return _TALK_PHASES * segment + phase


def _wander(rng: np.random.Generator, times: np.ndarray, amplitude: tuple[float, float],
            period: tuple[float, float]) -> np.ndarray:
    return rng.uniform(*amplitude) * np.sin(2 * np.pi * times / rng.uniform(*period) + rng.uniform(0, 2 * np.pi))


def _background(rng: np.random.Generator, design: dict) -> YuvFrame:
    width, height = design["frame_size"]
    slot_w = width // design["slots"]
    frame = np.empty((height, width, 3), np.uint8)
    ramp = np.linspace(-1, 1, height)[:, None]
    for s in range(design["slots"]):
        # Cool studio-like backdrops: skin-coloured backgrounds would hide the face outline from MTCNN.
        hue = rng.uniform(0.3, 0.75)
        base = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.5), rng.uniform(0.45, 0.8)))
        grad = rng.uniform(-20, 20, size=3)
        block = np.clip(base[None, :] + ramp * grad[None, :], 0, 255).astype(np.uint8)
        frame[:, s * slot_w:(s + 1) * slot_w] = block[:, None, :]
    return YuvFrame.from_rgb(frame)


def _frames(background: YuvFrame, tracks: list[_Track], slot_w: int, n_frames: int) -> Iterator[np.ndarray]:
    """yuv420p buffers of the video; the same buffer is reused, so consume each before the next."""
    frame = YuvFrame(*background.y.shape)
    for i in range(n_frames):
        np.copyto(frame.buffer, background.buffer)
        for slot, track in enumerate(tracks):
            _paste(frame, track.sprites[track.index[i]], int(track.x[i]), int(track.y[i]),
                   slot * slot_w, (slot + 1) * slot_w)
        yield frame.buffer


def _encode_video(path: Path, frames: Iterable[np.ndarray], design: dict, audio: np.ndarray | None) -> None:
    import av

    container_format, codec = design["container"]
    width, height = design["frame_size"]
    with eio.atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=design["fps"])
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1  # single-threaded encoders give reproducible bytes
            if codec == "mpeg4":
                stream.codec_context.codec_tag = "DIVX"
                stream.bit_rate = 400_000
            else:
                stream.options = {"preset": "superfast", "crf": "23"}
            astream = None
            if audio is not None:
                astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
                astream.bit_rate = 48_000
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
            if astream is not None:
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :]), format="fltp", layout="mono")
                aframe.sample_rate = SAMPLE_RATE
                for packet in astream.encode(aframe):
                    container.mux(packet)
                for packet in astream.encode(None):
                    container.mux(packet)


def write_wav(path: Path, channels: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit PCM wav of float samples in [-1, 1]; ``channels`` is (n_channels, n_samples)."""
    pcm = np.round(np.clip(channels, -1, 1) * 32767).astype("<i2").T
    with eio.atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(channels.shape[0])
            out.setsampwidth(2)
            out.setframerate(sr)
            out.writeframes(np.ascontiguousarray(pcm).tobytes())


def _render_video(plan: ReleasePlan, video: VideoPlan, video_path: Path, wav_path: Path | None,
                  embed_audio: bool) -> None:
    design = SYNTH_DESIGN[plan.dataset]
    rng = _rng(plan.seed, plan.dataset, 1, video.index)
    audio, envelopes = _render_audio(rng, video)
    if wav_path is not None:
        write_wav(wav_path, audio)
    fps = float(design["fps"])
    n_frames = int(math.ceil(video.duration * fps))
    tracks = _slot_tracks(rng, video, design, envelopes, n_frames)
    slot_w = design["frame_size"][0] // design["slots"]
    frames = _frames(_background(rng, design), tracks, slot_w, n_frames)
    _encode_video(video_path, frames, design, audio.mean(axis=0) if embed_audio else None)
