"""Stand-in for the README's "Monitor your own training" example, run by tests/test_wheel.py
against the installed wheel: a two-trial Ray Tune sweep of a tiny MLP on synthetic data, one
trial with an absurd learning rate. The healthy trial runs to its end; the broken one is killed.

Uses the monitor's low-level parts (``monitor.hooks.attach``, ``HeuristicScheduler``) as
``trainers/tune.py`` wires them; to be replaced by the README's blocks once they exist.
"""

import os

import ray
import torch
from ray import tune
from torch import nn

from heuristics.rules import load_rules
from monitor.hooks import attach
from monitor.paths import runs_dir
from monitor.scheduler import HeuristicScheduler

ITERATIONS = 4


def train(config):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 1))
    health = attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    x = torch.randn(256, 8)
    y = x.sum(dim=1, keepdim=True)
    for _ in range(ITERATIONS):
        for _ in range(10):
            health.step()
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        tune.report({"loss": float(loss), "health": health.collect()})


def main() -> None:
    rules = load_rules(["builtin"])
    run_dir = runs_dir() / "wheel_example"
    scheduler = HeuristicScheduler(rules, run_dir, "wheel_example", ITERATIONS,
                                   run="wheel_example")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        train, param_space={"lr": tune.grid_search([0.01, 1e6])},
        tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=scheduler),
        run_config=tune.RunConfig(name="wheel_example", storage_path=str(runs_dir()),
                                  verbose=0))
    results = tuner.fit()
    iterations = {r.config["lr"]: r.metrics.get("training_iteration", 0) for r in results}
    print(f"EXAMPLE rules={len(rules)} iterations={iterations} runs={runs_dir()}")
    assert iterations[0.01] == ITERATIONS, iterations  # the healthy trial ran to its end
    assert iterations[1e6] < ITERATIONS, iterations  # the broken one was killed early
    assert (run_dir / "heuristics").is_dir(), os.listdir(run_dir)
    ray.shutdown()


if __name__ == "__main__":
    main()
