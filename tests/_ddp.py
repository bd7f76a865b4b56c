"""Two CPU processes under gloo for the DDP tests: spawn, rendezvous, timeouts and a teardown that cannot hang.

Why the teardown collects garbage and destroys the group itself (medssl.train.release_process_group does the same
for training runs): on a loaded machine, ranks that had finished their checks hung in the interpreter's final
garbage collection (faulthandler: "Garbage-collecting", no Python frame, until killed) or aborted there with
"terminate called without an active exception" (SIGABRT). Done here, while the interpreter is whole, nothing of the
group is left for that last collection.

Timeouts are generous because a loaded 2-core machine can take tens of seconds to start a process that imports
torch: a rank that arrives late must not fail a correct test; a hang still ends, with the worker named.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=180)  # rendezvous and every collective
SPAWN_TIMEOUT = 600.0                                  # the whole spawned test


def store_path() -> str:
    """A fresh file for gloo's FileStore rendezvous: no port to pick, so no race with another process for one."""
    return os.path.join(tempfile.mkdtemp(prefix="medssl-ddp-"), "store")


def release_process_group() -> None:
    """Free what holds the default group (cycles: DDP reducers, Work objects), then destroy it, interpreter whole."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


@contextlib.contextmanager
def process_group(rank: int, store: str, world: int = WORLD) -> Iterator[None]:
    """One intra-op thread per process (two processes on two cores), a gloo group, and a clean teardown."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        release_process_group()


def spawn(worker: Callable[..., None], *args: object, nprocs: int = WORLD, timeout: float = SPAWN_TIMEOUT) -> None:
    """Run worker(rank, store, *args) in nprocs spawned processes; re-raise a worker's failure; kill on timeout."""
    ctx = mp.start_processes(worker, args=(store_path(), *args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):                    # raises ProcessRaisedException if a worker failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.__name__} did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
