"""run_forked: every item done once across forked children, results written to shared memory, failures raised."""

from __future__ import annotations

import pytest
import torch

from fusionrec.errors import CommandError
from fusionrec.parallel import check_processes, run_forked


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_every_item_runs_once_and_its_result_reaches_the_parent(processes):
    runs = torch.zeros(7, dtype=torch.long).share_memory_()

    def work(item: int) -> int:
        runs[item] += item + 1
        return 1

    run_forked(work, 7, processes=processes)
    assert runs.tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_a_failing_child_makes_the_parent_raise(capfd):
    def work(item: int) -> int:
        if item == 4:
            raise ValueError("bad item 4")
        return 1

    with pytest.raises(RuntimeError, match=r"child 0 \(exit code 1\) failed"):
        run_forked(work, 6, processes=2, desc="work")
    assert "bad item 4" in capfd.readouterr().err


def test_processes_are_checked_before_any_work():
    with pytest.raises(CommandError, match="positive integer"):
        check_processes(0, "cpu")
    with pytest.raises(CommandError, match="CPU only"):
        check_processes(2, "cuda")
    check_processes(2, "cpu")
