"""Ray Train's TorchTrainer (2 CPU workers, DistributedDataParallel on gloo) inside a Ray Tune
sweep under ``TuneMonitor``: each Tune trial runs a data-parallel training; the monitor
combines every window's activation statistics across the two ranks (``combine_ranks=True``: a
unit is dead only if it is dead on every rank's shard), rank 0's report reaches Tune through
Ray's ``TuneReportCallback``, and the early-kill scheduler stops the trial with the absurd
learning rate.

Run from the repository root: ``python -m examples.ray_train_ddp`` (about a minute on 2 cores).
"""

from __future__ import annotations

import os
import tempfile

import ray
import torch
from ray import train, tune
from ray.train.torch import TorchTrainer, prepare_model
from ray.tune.integration.ray_train import TuneReportCallback
from torch import nn

import monitor

EPOCHS = 8


def train_loop_per_worker(config: dict) -> None:
    """One rank: its own shard of the data, DDP through ``prepare_model``."""
    rank = train.get_context().get_world_rank()
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = x[:, :4].sum(dim=1, keepdim=True).tanh()
    x, y = x[rank::2], y[rank::2]  # each rank trains on its half
    model = prepare_model(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64),
                                        nn.ReLU(), nn.Linear(64, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    health = monitor.attach(model, combine_ranks=True)  # names without "module."
    for _ in range(EPOCHS):
        for i in range(0, len(x), 32):
            loss = nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            health.step()
        with health.paused(), torch.no_grad():
            val = nn.functional.mse_loss(model(x), y).item()
        # every rank calls collect() (it combines across ranks); rank 0's report reaches Tune
        train.report({"loss": loss.item(), "val_loss": val, "health": health.collect()})
    health.close()


def trial(config: dict) -> None:
    """One Tune trial: a two-worker data-parallel training."""
    TorchTrainer(train_loop_per_worker, train_loop_config=config,
                 scaling_config=train.ScalingConfig(num_workers=2),
                 run_config=train.RunConfig(
                     name=f"ddp_lr{config['lr']}", callbacks=[TuneReportCallback()],
                     storage_path=os.path.join(tempfile.gettempdir(), "ray_train_ddp"))).fit()


def main(lrs: tuple[float, ...] = (0.05, 5.0)) -> dict:
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 1 trial + 2 workers
    mon = monitor.TuneMonitor("ddp_sweep", budget=EPOCHS,
                              signals=monitor.Vocabulary(train_loss="loss",
                                                         validation="val_loss"))
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                       param_space={"lr": tune.grid_search(list(lrs))},
                       tune_config=mon.tune_config(max_concurrent_trials=1),
                       run_config=mon.run_config(verbose=0))
    return mon.print_summary(tuner.fit())


if __name__ == "__main__":
    main()
