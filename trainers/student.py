"""Student training: distil one target voice of a master into a small network."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from monitor.training.hooks import HealthMonitor
from trainers import voices
from trainers.audio import log_mel_distance, spectral_reconstruction
from trainers.config import merge_config
from trainers.models import ConvGenerator, make_student, parameter_count
from trainers.schedule import clip_gradients, make_optimizer, warm_up

STUDENT_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "master_checkpoint": "",  # path to a master checkpoint file (master.pt)
    "target_speaker": 1,
    "preset": "medium",  # quality setting: low | medium | high
    "activation": "relu",
    "bias_init": 0.0,  # constant bias of the convs feeding each activation (0: PyTorch default)
    "init_gain": 1.0,  # multiplier of the initial conv weights (1: PyTorch default)
    "optimizer": "adam",  # adam | sgd
    "lr": 1e-3,
    "lr_warmup_iterations": 0,  # linear warm-up of the learning rate (0: none)
    "grad_clip": 10.0,  # gradient-norm clip (null: none)
    "batch_size": 8,
    "segment": 4096,
    "steps_per_iteration": 20,
    "max_iterations": 20,
    "checkpoint_every": 5,
    "wave_weight": 1.0,  # the teacher's output is deterministic: waveform L1 is well-posed
    "spectral_weight": 1.0,
    "monitor_every": 4,
    "keep_audio": True,  # report one validation output clip per iteration (kill-report --html)
}


def load_master(path: str | Path) -> tuple[ConvGenerator, dict[str, Any]]:
    """Rebuild a master generator from a checkpoint file written by ``MasterTraining``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"master checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    c = state["config"]
    gen = ConvGenerator(c["corpus"]["n_speakers"], c["width"], c["depth"],
                        activation=c["activation"])
    gen.load_state_dict(state["generator"])
    gen.eval()
    return gen, c


def real_time_factor(model: torch.nn.Module, seconds: float = 2.0, *args: Any) -> float:
    """CPU seconds to convert one second of audio (single thread, batch 1, best of 3)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audio = torch.zeros(1, int(seconds * voices.SAMPLE_RATE) // 16 * 16)
        best = float("inf")
        with torch.no_grad():
            for _ in range(3):
                start = time.perf_counter()
                model(audio, *args)
                best = min(best, time.perf_counter() - start)
        return best / seconds
    finally:
        torch.set_num_threads(threads)


class StudentTraining:
    """One distillation run: ``train_iteration()`` returns the metrics of one report."""

    role = "student"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = merge_config(STUDENT_DEFAULTS, config, "student config")
        c = self.config
        torch.manual_seed(c["seed"])
        self.master, master_config = load_master(c["master_checkpoint"])
        for p in self.master.parameters():
            p.requires_grad_(False)
        self.corpus = voices.load(voices.CorpusSpec(**master_config["corpus"]))
        if not 0 <= c["target_speaker"] < self.corpus.spec.n_speakers:
            raise ValueError(f"target_speaker must be in [0, {self.corpus.spec.n_speakers}), "
                             f"got {c['target_speaker']}")
        self.audio = torch.from_numpy(self.corpus.audio)
        self.student = make_student(c["preset"], c["activation"], bias_init=c["bias_init"],
                                    init_gain=c["init_gain"])
        self.opt = make_optimizer(c["optimizer"], self.student.parameters(), c["lr"])
        self.rng = torch.Generator().manual_seed(c["seed"] + 1)
        self.iteration = self.step = 0
        self.monitor = HealthMonitor(self.student, every=c["monitor_every"])
        self._val = self._validation_set()

    def _speaker(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.config["target_speaker"], dtype=torch.long)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, spec = self.config, self.corpus.spec
        b = c["batch_size"]
        src = torch.randint(spec.n_speakers, (b,), generator=self.rng)
        utt = torch.randint(spec.n_utterances - spec.n_validation, (b,), generator=self.rng)
        off = torch.randint(spec.n_samples - c["segment"] + 1, (b,), generator=self.rng)
        source = self.audio[src, utt].gather(1, off[:, None] + torch.arange(c["segment"])[None])
        with torch.no_grad():
            teacher = self.master(source, self._speaker(b))
        return source, teacher

    def _validation_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spec = self.corpus.spec
        n = spec.n_samples - spec.n_samples % 16
        sources, truths = [], []
        for u in self.corpus.validation_utterances:
            for s in range(0, spec.n_speakers, max(1, spec.n_speakers // 4)):
                sources.append(self.audio[s, u, :n])
                truths.append(self.audio[self.config["target_speaker"], u, :n])
        source = torch.stack(sources)
        with torch.no_grad():
            teacher = self.master(source, self._speaker(len(source)))
        return source, teacher, torch.stack(truths)

    def train_iteration(self) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        self.student.train()
        total = torch.zeros(())
        for _ in range(c["steps_per_iteration"]):
            source, teacher = self._batch()
            warm_up(c, self.step, (self.opt, c["lr"]))
            self.monitor.step()
            out = self.student(source)
            loss = (c["wave_weight"] * F.l1_loss(out, teacher)
                    + c["spectral_weight"] * spectral_reconstruction(out, teacher))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(self.student.parameters(), c["grad_clip"])
            self.opt.step()
            self.monitor.observe_output(out, teacher)
            total += loss.detach()
            self.step += 1
        self.iteration += 1
        metrics: dict[str, Any] = {"loss": float(total) / c["steps_per_iteration"],
                                   "grad_norm": float(grad_norm)}
        metrics.update(self.evaluate())
        if c["keep_audio"]:  # the first validation utterance, and the true target voice
            metrics.update(self.monitor.keep_audio(self._val_output[0], voices.SAMPLE_RATE,
                                                   reference=self._val[2][0]))
        metrics["health"] = self.monitor.collect()
        metrics["steps"] = self.step
        metrics["step_time_s"] = (time.perf_counter() - start) / c["steps_per_iteration"]
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        source, teacher, truth = self._val
        self.student.eval()
        with self.monitor.paused():
            out = self.student(source)
        self._val_output = out
        return {"val_teacher_logmel": float(log_mel_distance(out, teacher)),
                "val_logmel": float(log_mel_distance(out, truth)),
                "master_val_logmel": float(log_mel_distance(teacher, truth)),
                "n_parameters": parameter_count(self.student),
                "master_parameters": parameter_count(self.master)}

    def speed(self) -> dict[str, float]:
        """CPU real-time factors of student and master (lower is faster)."""
        spk = self._speaker(1)
        return {"rtf": real_time_factor(self.student),
                "master_rtf": real_time_factor(self.master, 2.0, spk)}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "student": self.student.state_dict(),
                "opt": self.opt.state_dict(), "rng": self.rng.get_state(),
                "iteration": self.iteration, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"])
        self.iteration, self.step = state["iteration"], state["step"]

    def close(self) -> None:
        self.monitor.close()
