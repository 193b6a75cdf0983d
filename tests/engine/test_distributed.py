"""The data-parallel glue: accelerate's epoch sharding, sd-scripts' scheduler counting, the launch
environment, and the one all-reduce per step on a real gloo group of two processes."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from lib_lora.engine import optim
from lib_lora.engine.distributed import (
    DataParallel,
    LaunchEnv,
    SteppedScheduler,
    from_env,
    global_index,
    is_peer_failure,
    shard,
)
from lib_lora.events import StopToken


def test_shards_split_the_single_process_order_and_pad_the_last_round_from_the_start() -> None:
    batches = list(range(5))
    assert shard(batches, 0, 2) == [0, 2, 4] and shard(batches, 1, 2) == [1, 3, 0]  # accelerate's even_batches
    assert [shard(list(range(8)), r, 4) for r in range(4)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert shard(batches, 0, 1) == batches
    # every batch is trained once per epoch (plus the padding), each at its place in the single order
    for world in (2, 3, 4):
        seen = [b for r in range(world) for b in shard(list(range(10)), r, world)]
        assert set(seen) == set(range(10)) and len(seen) == world * -(-10 // world)
        assert all(
            shard(list(range(10)), r, world)[k] == global_index(k, r, world)
            for r in range(world)
            for k in range(10 // world)
        )


def test_launch_environment() -> None:
    assert from_env({}) is None and from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert from_env({"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}) == LaunchEnv(5, 4, 1)


def test_the_scheduler_built_for_n_times_the_steps_and_stepped_n_times_follows_the_single_curve() -> None:
    """sd-scripts under accelerate: the same curve per optimizer step; an integer warmup is N times shorter."""

    def curve(processes: int, warmup: float) -> list[float]:
        param = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([param], lr=1.0)
        sched = optim.build_scheduler("cosine", opt, num_training_steps=10 * processes, num_warmup_steps=warmup)
        sched = SteppedScheduler(sched, processes)
        values = []
        for _ in range(10):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return values

    assert curve(2, 0) == pytest.approx(curve(1, 0)) and curve(4, 0.2) == pytest.approx(curve(1, 0.2))
    assert curve(2, 4)[:3] == pytest.approx([0.0, 0.5, 1.0])  # 4 warmup steps over 2 processes: 2 steps
    assert curve(1, 4)[:3] == pytest.approx([0.0, 0.25, 0.5])


def test_peer_failures_are_recognised() -> None:
    assert is_peer_failure(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not is_peer_failure(ValueError("bad value"))


def _worker(rank: int, port: int, results) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    parallel = DataParallel.start(LaunchEnv(rank, 2, rank), torch.device("cpu"))
    try:
        stop = StopToken()
        loop_stop = parallel.watch(stop)
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.full((2, 2), float(rank)))  # rank 0's values win
        parallel.broadcast_parameters([a, b])
        a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
        # b gets no gradient on rank 1 (counts as zero)
        b.grad = torch.ones(2, 2) * 4 if rank == 0 else None
        loss = parallel.sync_step([a, b], float(rank))
        first = (a.grad.tolist(), b.grad.tolist(), loss, loop_stop.requested, b.detach().tolist())
        if rank == 1:
            stop.request("Ctrl-C")
        parallel.sync_step([a, b], 0.0)
        shared = parallel.broadcast_tensors([torch.arange(6.0).view(2, 3), torch.ones(1, 2, 2)] if rank == 0 else None)
        results[rank] = (*first, loop_stop.requested, loop_stop.reason, [t.tolist() for t in shared])
    finally:
        parallel.close()


def test_one_all_reduce_averages_the_gradients_and_the_loss_and_shares_a_stop() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    for rank in (0, 1):
        grad_a, grad_b, loss, stopped_early, b_value, stopped, reason, shared = results[rank]
        assert grad_a == pytest.approx([1.5, 3.0, 4.5]) and grad_b == [[2.0, 2.0], [2.0, 2.0]]
        assert loss == 0.5 and not stopped_early and b_value == [[0.0, 0.0], [0.0, 0.0]]
        assert stopped  # asked on rank 1 only, seen by both at the same step
        assert shared == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[[1.0, 1.0], [1.0, 1.0]]]]
    assert results[1][6] == "Ctrl-C" and results[0][6] == "stop requested on another process"
