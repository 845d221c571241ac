"""Work split over forked CPU processes, one torch thread each.

Evaluation and export spend their time in many small matmuls (64-wide layers over a few hundred users), which one
process does not spread well over several threads: on a busy machine idle OpenMP threads mostly spin. Forked
children share the parent's model, data and movie vectors copy-on-write, each takes every N-th item, and they write
their results where the parent reads them (shared tensors, part files): nothing is pickled.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from fusionrec.errors import CommandError


def check_processes(processes: int, device: torch.device | str) -> None:
    """A clear error before any work starts: forked processes need Linux-style fork and a CPU model."""
    if processes < 1:
        raise CommandError(f"--processes must be a positive integer, not {processes}.")
    if processes > 1 and torch.device(device).type != "cpu":
        raise CommandError("--processes > 1 runs on CPU only; on a GPU leave it at 1 (the GPU already runs in parallel).")
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise CommandError("--processes > 1 needs the fork start method (Linux, macOS); use --processes 1 here.")


def run_forked(
    work: Callable[[int], int],
    count: int,
    *,
    processes: int,
    total: int | None = None,
    desc: str = "items",
    unit: str = "item",
    show_progress: bool = False,
) -> None:
    """Call `work(i)` for every i in range(count): in this process when `processes` is 1, else in `processes` forked
    children, child c taking items c, c + N, ... (interleaved, so uneven items balance). `work` returns how much it
    did (for the progress bar over `total`, default `count`) and writes its results itself. Each child runs one
    torch thread, so N processes use N cores. A child that fails makes
    this raise once all have stopped; an interrupt stops them all."""
    bar = tqdm(total=count if total is None else total, desc=desc, unit=unit, disable=not show_progress, mininterval=2)
    if processes == 1 or count <= 1:
        for item in range(count):
            bar.update(work(item))
        bar.close()
        return
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)
    children = [context.Process(target=_child, args=(work, range(c, count, processes), done), daemon=True)
                for c in range(min(processes, count))]  # fmt: skip
    try:
        for child in children:
            child.start()
        while any(child.is_alive() for child in children):
            time.sleep(0.2)
            bar.update(done.value - bar.n)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        bar.close()
    failed = [f"child {number} (exit code {child.exitcode})" for number, child in enumerate(children) if child.exitcode]
    if failed:
        raise RuntimeError(f"{desc}: {', '.join(failed)} failed; its traceback is printed above.")


def _child(work: Callable[[int], int], items: range, done) -> None:
    """A forked child's loop, on one thread: torch then never enters an OpenMP region, whose thread pool a fork does
    not copy. An exception ends it with exit code 1 and its traceback on stderr (multiprocessing)."""
    torch.set_num_threads(1)
    for item in items:
        amount = work(item)
        with done.get_lock():
            done.value += amount
