"""Deterministic synthetic multi-speaker speech (source-filter model, no downloads).

Each speaker has a pitch, a vocal-tract length (formant scaling), a spectral tilt and a
breathiness.  Each utterance is a sequence of voiced (vowel-like) and unvoiced (fricative-like)
segments with a prosody contour.  The *content* of an utterance (segment kinds, vowels,
durations, prosody) depends only on the utterance index, so every speaker says every utterance
with the same timing: a voice conversion always has a time-aligned ground-truth target.

Everything is seeded: the same ``CorpusSpec`` gives bit-identical audio on every machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16_000

# First three formants (Hz) of a few vowels for an average adult vocal tract.
VOWELS = np.array(
    [
        [730, 1090, 2440],  # a
        [270, 2290, 3010],  # i
        [300, 870, 2240],  # u
        [530, 1840, 2480],  # e
        [570, 840, 2410],  # o
        [660, 1720, 2410],  # ae
        [490, 1350, 1690],  # er
    ],
    dtype=np.float64,
)
FORMANT_BANDWIDTHS = np.array([80.0, 110.0, 160.0])
# Centre frequencies (Hz) of fricative noise bands (s, sh, f).
FRICATIVES = np.array([5500.0, 3000.0, 1800.0])


@dataclass(frozen=True)
class Speaker:
    """Voice parameters of one synthetic speaker."""

    index: int
    f0_hz: float  # mean pitch
    formant_scale: float  # >1: shorter vocal tract, higher formants
    tilt: float  # one-pole low-pass coefficient on the glottal source (0..1)
    breath: float  # breath-noise level relative to the voiced source


@dataclass(frozen=True)
class CorpusSpec:
    """Size and seed of a synthetic corpus."""

    n_speakers: int = 24
    n_utterances: int = 40
    n_validation: int = 8  # the last utterances are held out for validation
    seconds: float = 0.5
    seed: int = 464

    def __post_init__(self) -> None:
        if self.n_speakers < 2:
            raise ValueError(f"n_speakers must be >= 2, got {self.n_speakers}")
        if not 0 < self.n_validation < self.n_utterances:
            raise ValueError(
                f"n_validation must be in (0, n_utterances={self.n_utterances}), "
                f"got {self.n_validation}"
            )
        if self.seconds <= 0.05:
            raise ValueError(f"seconds must be > 0.05, got {self.seconds}")

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))

    def key(self) -> str:
        text = repr(sorted(asdict(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_speaker(index: int, seed: int) -> Speaker:
    """Draw the voice of speaker ``index`` (deterministic in ``seed`` and ``index``)."""
    rng = np.random.default_rng([seed, 1, index])
    female = index % 2 == 1
    f0 = rng.uniform(165, 255) if female else rng.uniform(85, 150)
    scale = rng.uniform(1.08, 1.25) if female else rng.uniform(0.85, 1.02)
    return Speaker(
        index=index,
        f0_hz=float(f0),
        formant_scale=float(scale),
        tilt=float(rng.uniform(0.55, 0.9)),
        breath=float(rng.uniform(0.01, 0.08)),
    )


@dataclass(frozen=True)
class Segment:
    voiced: bool
    n: int  # samples
    vowel: int  # index into VOWELS (voiced) or FRICATIVES (unvoiced)
    pitch_start: float  # prosody multipliers of the speaker's f0
    pitch_end: float
    gain: float


def make_content(index: int, seed: int, n_samples: int) -> list[Segment]:
    """Segments of utterance ``index``: speaker-independent timing, phones and prosody."""
    rng = np.random.default_rng([seed, 2, index])
    segments: list[Segment] = []
    total = 0
    declination = rng.uniform(0.8, 0.95)  # pitch falls over the phrase
    while total < n_samples:
        voiced = rng.random() < 0.75
        n = int(rng.integers(900, 2600) if voiced else rng.integers(400, 1300))
        n = min(n, n_samples - total)
        pos = total / n_samples
        start = (1.0 + 0.15 * rng.standard_normal()) * (1 - (1 - declination) * pos)
        end = start * (1.0 + 0.1 * rng.standard_normal())
        segments.append(
            Segment(
                voiced=voiced,
                n=n,
                vowel=int(rng.integers(len(VOWELS) if voiced else len(FRICATIVES))),
                pitch_start=float(np.clip(start, 0.6, 1.5)),
                pitch_end=float(np.clip(end, 0.6, 1.5)),
                gain=float(rng.uniform(0.5, 1.0) if voiced else rng.uniform(0.08, 0.2)),
            )
        )
        total += n
    return segments


def _resonator(freq: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Second-order all-pole resonator with unit gain at DC-normalised peak."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * freq / SAMPLE_RATE
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    return np.array([1.0 - r]), a


def _envelope(n: int, ramp: int = 160) -> np.ndarray:
    env = np.ones(n)
    r = min(ramp, n // 2)
    if r > 0:
        win = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r))
        env[:r] = win
        env[n - r :] = win[::-1]
    return env


def synthesize(speaker: Speaker, content: list[Segment], seed: int, utterance: int) -> np.ndarray:
    """Render one utterance in one voice as float32 samples in [-1, 1]."""
    rng = np.random.default_rng([seed, 3, utterance, speaker.index])
    out = []
    phase = 0.0
    for seg in content:
        t = np.arange(seg.n)
        if seg.voiced:
            f0 = speaker.f0_hz * np.linspace(seg.pitch_start, seg.pitch_end, seg.n)
            f0 = f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.0 * t / SAMPLE_RATE))  # vibrato
            phases = phase + np.cumsum(f0) / SAMPLE_RATE
            phase = float(phases[-1] % 1.0)
            # Glottal pulses: one impulse per period, then the speaker's spectral tilt.
            pulses = np.diff(np.floor(phases), prepend=np.floor(phases[0])).clip(0, 1)
            source = lfilter([1.0], [1.0, -speaker.tilt], pulses)
            source += speaker.breath * rng.standard_normal(seg.n)
            signal = np.zeros(seg.n)
            for f, bw, w in zip(VOWELS[seg.vowel] * speaker.formant_scale, FORMANT_BANDWIDTHS,
                                (1.0, 0.6, 0.3)):
                b, a = _resonator(min(f, SAMPLE_RATE * 0.45), bw)
                signal += w * lfilter(b, a, source)
        else:
            noise = rng.standard_normal(seg.n)
            b, a = _resonator(FRICATIVES[seg.vowel] * speaker.formant_scale, 900.0)
            signal = lfilter(b, a, noise)
        signal = signal / (np.sqrt(np.mean(signal**2)) + 1e-8)
        out.append(seg.gain * 0.1 * signal * _envelope(seg.n))
    audio = np.concatenate(out)
    audio -= audio.mean()
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


@dataclass
class Corpus:
    """All utterances for all speakers: ``audio[speaker, utterance, sample]``."""

    spec: CorpusSpec
    speakers: list[Speaker]
    audio: np.ndarray

    @property
    def train_utterances(self) -> range:
        return range(0, self.spec.n_utterances - self.spec.n_validation)

    @property
    def validation_utterances(self) -> range:
        return range(self.spec.n_utterances - self.spec.n_validation, self.spec.n_utterances)


def generate(spec: CorpusSpec) -> Corpus:
    """Synthesize the whole corpus (deterministic)."""
    speakers = [make_speaker(i, spec.seed) for i in range(spec.n_speakers)]
    audio = np.empty((spec.n_speakers, spec.n_utterances, spec.n_samples), dtype=np.float32)
    for u in range(spec.n_utterances):
        content = make_content(u, spec.seed, spec.n_samples)
        for s in speakers:
            audio[s.index, u] = synthesize(s, content, spec.seed, u)
    return Corpus(spec=spec, speakers=speakers, audio=audio)


def cache_dir() -> Path:
    return Path(os.environ.get("MONITOR_CACHE_DIR", Path.home() / ".cache" / "voice-monitor"))


def load(spec: CorpusSpec) -> Corpus:
    """Generate the corpus, or read it from the on-disk cache keyed by the spec."""
    path = cache_dir() / f"corpus-{spec.key()}.npy"
    speakers = [make_speaker(i, spec.seed) for i in range(spec.n_speakers)]
    if path.exists():
        audio = np.load(path)
        if audio.shape == (spec.n_speakers, spec.n_utterances, spec.n_samples):
            return Corpus(spec=spec, speakers=speakers, audio=audio)
    corpus = generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, corpus.audio)
    os.replace(tmp, path)
    return corpus
