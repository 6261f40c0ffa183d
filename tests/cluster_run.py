"""Run early_kill_smoke on a real two-node Ray cluster; print what happened as JSON.

A head node with no CPUs and a worker node with 2 CPUs are started as separate Ray nodes
(``ray.cluster_utils.Cluster``), so every trial must run on the worker node. A callback scrapes
the driver's exporter while trials report, to show that their series reach it.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import ray
from ray import tune
from ray.cluster_utils import Cluster

from monitor.serving import exporter as exporter_module
from trainers import experiment
from trainers import tune as runner


class Scraper(tune.Callback):
    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for exp in list(exporter_module.ACTIVE.values()):
            text = urllib.request.urlopen(exp.url, timeout=5).read().decode()
            self.seen[trial.trial_id] = self.seen.get(trial.trial_id, False) or (
                f'trial="{trial.trial_id}"' in text and "tune_health_dead_ratio{" in text)


def main(storage: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    scraper = Scraper()
    try:
        summary = runner.run(experiment.load("early_kill_smoke"), storage=Path(storage),
                             address=cluster.address, callbacks=[scraper],
                             tune_storage=f"{storage}/shared")
        print("RESULT " + json.dumps({
            "worker_node": worker.node_id, "head_node": cluster.head_node.node_id,
            "trials": [{"trial_id": t["trial_id"], "variant": t["variant"],
                        "node_id": t["last"].get("node_id"), "iterations": t["iterations"],
                        "killed": t.get("killed")} for t in summary["trials"]],
            "scraped": scraper.seen, "run": summary["name"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
