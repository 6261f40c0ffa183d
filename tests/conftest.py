"""Shared fixtures: one Ray instance per session, a private corpus cache, small trainings."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def run_master(config: dict, iterations: int) -> list[dict]:
    """Train a real master for ``iterations`` reports; return every report's metrics."""
    from trainers.master import MasterTraining

    training = MasterTraining(config)
    try:
        return [training.train_iteration() for _ in range(iterations)]
    finally:
        training.close()
