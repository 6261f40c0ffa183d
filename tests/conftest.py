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


@pytest.fixture(scope="session")
def early_kill_run(ray_session, tmp_path_factory):
    """One real ``early_kill_smoke`` run (three trials, two killed), shared by the tests that
    only read it: ``(summary, run directory)``."""
    from trainers import experiment
    from trainers import tune as runner

    storage = tmp_path_factory.mktemp("early_kill")
    summary = runner.run(experiment.load("early_kill_smoke"), storage=storage)
    return summary, storage / summary["name"]


def run_master(config: dict, iterations: int) -> list[dict]:
    """Train a real master for ``iterations`` reports; return every report's metrics."""
    from trainers.master import MasterTraining

    training = MasterTraining(config)
    try:
        return [training.train_iteration() for _ in range(iterations)]
    finally:
        training.close()


class MasterRuns:
    """Real master trainings of the master_v464 variants, each run once per test session and
    extended on demand (training is deterministic, so the first N reports never change).

    They train on one torch thread: the order of a parallel reduction depends on the thread
    count, and the failing variants (high learning rates) amplify such rounding differences
    into different trajectories on machines with different core counts."""

    def __init__(self) -> None:
        from trainers import experiment

        self.variants = {v["name"]: {k: x for k, x in v.items() if k != "name"}
                         for v in experiment.load("master_v464").variants}
        self.trainings: dict = {}
        self.reports: dict[str, list[dict]] = {}

    def __call__(self, variant: str, iterations: int) -> list[dict]:
        from trainers.master import MasterTraining

        if variant not in self.trainings:
            self.trainings[variant] = MasterTraining(self.variants[variant])
            self.reports[variant] = []
        reports = self.reports[variant]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._extend(variant, reports, iterations)
        finally:
            torch.set_num_threads(threads)
        return reports[:iterations]

    def _extend(self, variant: str, reports: list[dict], iterations: int) -> None:
        while len(reports) < iterations:
            result = self.trainings[variant].train_iteration()
            result["training_iteration"] = len(reports) + 1
            result["time_total_s"] = float(len(reports) + 1)
            reports.append(result)

    def close(self) -> None:
        for t in self.trainings.values():
            t.close()


@pytest.fixture(scope="session")
def master_runs():
    runs = MasterRuns()
    yield runs
    runs.close()


@pytest.fixture(params=["one_pass", "vectorised"])
def hook_path(request, monkeypatch):
    """Run a hook test on both CPU paths: the one-pass compiled kernel and the vectorised
    PyTorch ops (accelerators, and where numba cannot load)."""
    from monitor.training.signals import fused

    if request.param == "vectorised":
        monkeypatch.setattr(fused, "available", lambda: False)
    elif not fused.available():
        pytest.fail(f"numba, a dependency, did not load: {fused.unavailable_reason()}")
    return request.param
