"""Two real processes under DistributedDataParallel (gloo): rank-independent names, and a
unit dead on one rank's shard but alive on the other's is not called dead when the window is
combined across ranks."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from monitor.training.hooks import attach


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    # both ranks on this host: gloo's pairs on loopback, whatever the hostname resolves to
    # (a container's address may bind but not connect); collectives fail within a minute
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        with torch.no_grad():
            model[0].weight.copy_(torch.eye(2))
            model[0].bias.zero_()
        ddp = nn.parallel.DistributedDataParallel(model)
        # feature 0 is negative on rank 0's shard (unit 0 never fires there), positive on 1's
        x = torch.rand(16, 2) + 0.1
        x[:, 0] *= -1 if rank == 0 else 1
        x[:, 1] -= 0.6  # unit 1 fires on part of both shards
        results = {}
        for combine in (False, True):
            health = attach(ddp, every=1, combine_ranks=combine)
            health.step()
            ddp(x).sum().backward()
            results[str(combine)] = health.collect()["layers"]
            health.close()
        del ddp  # its reducer holds the process group: released before it is destroyed
        dist.barrier()  # neither rank tears the group down while the other still uses it
        Path(out, f"{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _run_ranks(out: Path, deadline_s: float = 240.0) -> None:
    """Both ranks in spawned processes; a rank's exception is re-raised here with its
    traceback, and ranks still running at the deadline are ended (a failed test, not a hang)."""
    context = mp.start_processes(_rank, args=(_free_port(), str(out)), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo ranks did not finish within {deadline_s:.0f} s")


def test_ddp_names_and_cross_rank_dead_units(tmp_path):
    _run_ranks(tmp_path)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert set(rank["False"]) == set(rank["True"]) == {"1"}  # not "module.1"
    assert ranks[0]["False"]["1"]["dead_ratio"] == 0.5  # alone, rank 0 calls unit 0 dead
    assert ranks[1]["False"]["1"]["dead_ratio"] == 0.0
    for rank in ranks:  # combined: alive on rank 1, so not dead; both ranks agree
        assert rank["True"]["1"]["dead_ratio"] == 0.0
        assert rank["True"]["1"] == ranks[0]["True"]["1"]
    # the combined spread is that of both shards together, not either rank's alone
    assert ranks[0]["True"]["1"]["activation_std"] != ranks[0]["False"]["1"]["activation_std"]
