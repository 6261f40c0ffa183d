import numpy as np
import pytest

from trainers import voices


def test_generator_is_deterministic():
    spec = voices.CorpusSpec(n_speakers=4, n_utterances=3, n_validation=1, seconds=0.3, seed=7)
    a, b = voices.generate(spec).audio, voices.generate(spec).audio
    assert a.shape == (4, 3, 4800)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    other = voices.generate(voices.CorpusSpec(n_speakers=4, n_utterances=3, n_validation=1,
                                              seconds=0.3, seed=8)).audio
    assert not np.array_equal(a, other)


def _f0(x: np.ndarray) -> float:
    """Pitch by autocorrelation of the loudest 2048-sample window (50-400 Hz)."""
    starts = range(0, len(x) - 2048, 256)
    s = max(starts, key=lambda i: np.sum(x[i:i + 2048] ** 2))
    w = x[s:s + 2048] - x[s:s + 2048].mean()
    ac = np.correlate(w, w, "full")[2047:]
    lo, hi = voices.SAMPLE_RATE // 400, voices.SAMPLE_RATE // 50
    return voices.SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi])))


def test_speakers_differ_in_pitch_but_share_content_timing():
    spec = voices.CorpusSpec(n_speakers=6, n_utterances=2, n_validation=1, seconds=0.5)
    corpus = voices.generate(spec)
    low, high = corpus.speakers[0], corpus.speakers[1]  # even: low voice, odd: high voice
    assert low.f0_hz < 150 < high.f0_hz
    assert _f0(corpus.audio[1, 0]) > _f0(corpus.audio[0, 0])
    # Same utterance in two voices: the energy envelopes line up (same segment timing).
    env = lambda x: np.sqrt(np.convolve(x**2, np.ones(400) / 400, "same"))  # noqa: E731
    same = np.corrcoef(env(corpus.audio[0, 0]), env(corpus.audio[3, 0]))[0, 1]
    different = np.corrcoef(env(corpus.audio[0, 0]), env(corpus.audio[3, 1]))[0, 1]
    assert same > 0.6
    assert same > different + 0.3


def test_split_is_by_utterance():
    corpus = voices.generate(voices.CorpusSpec(n_speakers=2, n_utterances=5, n_validation=2))
    assert list(corpus.train_utterances) == [0, 1, 2]
    assert list(corpus.validation_utterances) == [3, 4]


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="n_validation"):
        voices.CorpusSpec(n_utterances=4, n_validation=4)
