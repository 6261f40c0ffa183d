"""Short audio samples a training hands over with its reports, kept in the run directory.

In the training: ``metrics.update(health.keep_audio(output, sample_rate))`` adds
one clip (16-bit mono WAV, at most ``MAX_SECONDS``, base64 text) to the report under
``AUDIO_KEY``; ``reference=`` (the target voice) is sent once. The clip travels with the result
like the signals do, so trials on any node reach the driver, where ``StoreWriter`` takes it out
of the result (Tune's own loggers never see it) and ``keep`` writes
``<run dir>/audio/<trial>/<iteration>.wav``. A trial keeps at most ``MAX_CLIPS`` clips: all of
its first reports, then, as it goes on, only iterations on a grid that doubles its spacing
(every 2nd, 4th...), and always its latest, so a long training stays bounded (at most
``MAX_CLIPS + 1`` clips of ``MAX_SECONDS``: about 1 MB per trial at 16 kHz).
"""

from __future__ import annotations

import base64
import io
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np

from monitor.durability import write_atomic

AUDIO_KEY = "monitor_audio"
REFERENCE_KEY = "monitor_audio_reference"
AUDIO_DIR = "audio"
REFERENCE_FILE = "reference.wav"
MAX_SECONDS = 1.0
MAX_CLIPS = 32
_CLIP = re.compile(r"(\d{6})\.wav")


def encode_wav(samples: Any, sample_rate: int, max_seconds: float = MAX_SECONDS) -> bytes:
    """``samples`` (a 1-D array or tensor, floats in [-1, 1]) as a mono 16-bit WAV file, cut to
    ``max_seconds``; NaN and infinities become silence, values beyond full scale are clipped."""
    if not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate: expected a whole number of Hz from 1000 to 192000, got "
                         f"{sample_rate!r}")
    if hasattr(samples, "detach"):
        samples = samples.detach().float().cpu().numpy()
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"audio: expected one channel (a 1-D waveform), got shape {x.shape}")
    x = np.nan_to_num(x[: int(max_seconds * sample_rate)], nan=0.0, posinf=0.0, neginf=0.0)
    pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def read_wav(path: str | Path | io.BytesIO) -> tuple[np.ndarray, int]:
    """The samples (floats in [-1, 1]) and sample rate of a clip written here."""
    with wave.open(path if isinstance(path, io.BytesIO) else str(path), "rb") as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32767, rate


class AudioKeeper:
    """The training's side: one clip per report (``HealthMonitor.keep_audio``)."""

    def __init__(self, max_seconds: float = MAX_SECONDS) -> None:
        self.max_seconds = max_seconds
        self.reference_sent = False

    def clip(self, samples: Any, sample_rate: int, reference: Any = None) -> dict[str, str]:
        """The report entries of one clip (and of the reference, the first time)."""
        out = {AUDIO_KEY: _text(encode_wav(samples, sample_rate, self.max_seconds))}
        if reference is not None and not self.reference_sent:
            out[REFERENCE_KEY] = _text(encode_wav(reference, sample_rate, self.max_seconds))
            self.reference_sent = True
        return out


def _text(wav: bytes) -> str:
    return base64.b64encode(wav).decode("ascii")


def _decode(text: str) -> bytes:
    wav = base64.b64decode(text, validate=True)
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    return wav


def kept_iterations(iterations: list[int], max_clips: int = MAX_CLIPS) -> set[int]:
    """Which of a trial's clip iterations stay: those on the finest grid of spacing 2**k with
    at most ``max_clips`` points up to the latest iteration (the same grid for every trial
    that has come as far), and the latest."""
    if not iterations:
        return set()
    latest, stride = max(iterations), 1
    while latest // stride > max_clips:
        stride *= 2
    return {i for i in iterations if i % stride == 0} | {latest}


def trial_dir(run_dir: str | Path, trial: str) -> Path:
    return Path(run_dir) / AUDIO_DIR / re.sub(r"[^A-Za-z0-9_.-]", "_", trial)


def keep(run_dir: str | Path, trial: str, iteration: int, result: dict[str, Any],
         max_clips: int = MAX_CLIPS) -> list[str]:
    """Take the clips out of ``result`` (always, so no later reader carries them) and write them
    for ``trial``; returns what was wrong with them (one sentence each), writes nothing then."""
    texts = {key: result.pop(key) for key in (AUDIO_KEY, REFERENCE_KEY) if key in result}
    problems = []
    folder = trial_dir(run_dir, trial)
    for key, text in texts.items():
        try:
            wav = _decode(text) if isinstance(text, str) else b""
            if not wav:
                raise ValueError(f"expected text, got {type(text).__name__}")
        except ValueError as exc:
            problems.append(f"{key} of trial {trial} at iteration {iteration}: expected a WAV "
                            f"clip from HealthMonitor.keep_audio ({exc}); not kept")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        name = REFERENCE_FILE if key == REFERENCE_KEY else f"{iteration:06d}.wav"
        write_atomic(folder / name, wav)  # a page never plays half a clip
    if AUDIO_KEY in texts and not problems:
        held = clips(run_dir, trial)
        for i in set(held) - kept_iterations(list(held), max_clips):
            held[i].unlink(missing_ok=True)
    return problems


def clips(run_dir: str | Path, trial: str) -> dict[int, Path]:
    """``{iteration: path}`` of the clips kept for ``trial``."""
    folder = trial_dir(run_dir, trial)
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(folder.iterdir())
            if (m := _CLIP.fullmatch(p.name))}


def reference(run_dir: str | Path, trial: str) -> Path | None:
    path = trial_dir(run_dir, trial) / REFERENCE_FILE
    return path if path.is_file() else None


def at_or_before(held: dict[int, Path], iteration: int) -> tuple[int, Path] | None:
    """The clip of the latest iteration not after ``iteration`` (else the earliest one)."""
    if not held:
        return None
    before = [i for i in held if i <= iteration]
    i = max(before) if before else min(held)
    return i, held[i]
