"""Ray Tune function trainables for the master and student trainers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainers.master import MasterTraining
from trainers.student import StudentTraining

CHECKPOINT_FILE = "model.pt"


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """Flatten a Tune config: fixed ``base`` settings, then the ``variant``, then sampled keys."""
    merged = dict(config.get("base", {}))
    variant = dict(config.get("variant", {}))
    variant.pop("name", None)
    merged.update(variant)
    merged.update({k: v for k, v in config.items() if k not in ("base", "variant")})
    return merged


def _run(training_cls: type, config: dict[str, Any]) -> None:
    torch.set_num_threads(int(os.environ.get("MONITOR_TRIAL_THREADS", "1")))
    training = training_cls(trial_config(config))
    c = training.config
    node_id = ray.get_runtime_context().get_node_id()  # which node ran it (clusters)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            training.load_state_dict(torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False))
    try:
        while training.iteration < c["max_iterations"]:
            metrics = training.train_iteration()
            metrics["role"] = training.role
            metrics["node_id"] = node_id
            last = training.iteration >= c["max_iterations"]
            if last and hasattr(training, "speed"):
                metrics.update(training.speed())
            if training.iteration % c["checkpoint_every"] == 0 or last:
                with tempfile.TemporaryDirectory() as d:
                    torch.save(training.state_dict(), Path(d) / CHECKPOINT_FILE)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(metrics)
    finally:
        training.close()


def master_trainable(config: dict[str, Any]) -> None:
    """Tune trainable: adversarial master training."""
    _run(MasterTraining, config)


def student_trainable(config: dict[str, Any]) -> None:
    """Tune trainable: distillation of one voice from a master checkpoint."""
    _run(StudentTraining, config)


TRAINABLES = {"master": master_trainable, "student": student_trainable}
