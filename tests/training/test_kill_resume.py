"""Kill training anywhere, lose nothing. One run is killed with SIGKILL three times, each time at a point reached
deterministically (tests/killpoint.py freezes the real script there; the test looks at the disk, then kills it):
in the middle of an optimizer step, in the middle of `accelerator.save_state` (the checkpoint half written), and in
the middle of the best-model swap (the old best/ moved aside, the new one not yet renamed in). Each time it resumes
with `--resume-from-checkpoint latest`; the last resume runs to the end, and the final and best weights are
torch.equal to an uninterrupted run's, with nothing left over from the kills.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killpoint import frozen_at, kill
from safetensors.torch import load_file
from tiny import offline_env

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "train_accelerate.py"
# 16-window batches, dropout on: an exact resume must restore the data order, the RNG and the optimizer.
TRAIN = ["--max-steps", "8", "--eval-steps", "2", "--checkpointing-steps", "2", "--checkpoints-total-limit", "2",
         "--logging-steps", "4", "--no-text", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2",
         "--max-history-length", "20", "--batch-size", "16", "--num-negatives", "32", "--report-to", "none",
         "--no-progress"]  # fmt: skip
LEFTOVER = re.compile(r"\.(tmp|old|del)-\d+-[0-9a-f]+$|\.partial$")


def train(dataset: Path, output: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dataset", str(dataset), "--output-dir", str(output), *TRAIN,
                           *extra], env=offline_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from fusionrec.data.prepare import prepare

    output = tmp_path_factory.mktemp("data") / "synthetic"
    prepare("synthetic", output, synthetic_users=60, synthetic_movies=120, synthetic_ratings_per_user=25)
    return output


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("straight") / "run"
    train(dataset, output)
    return output


def best_saves(run: Path) -> list[int]:
    """The steps whose validation NDCG@10 beat every earlier one: where best/ was (re)written."""
    saves, best = [], None
    for entry in json.loads((run / "train_summary.json").read_text())["history"]:
        if "ndcg@10" in entry and (best is None or entry["ndcg@10"] > best):
            saves.append(entry["step"])
            best = entry["ndcg@10"]
    return saves


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_killed_three_times_resumes_to_the_uninterrupted_parameters(dataset, uninterrupted, tmp_path):
    assert len(best_saves(uninterrupted)) >= 2, "the run must rewrite best/ at least once for a swap to kill"
    output = tmp_path / "run"
    checkpoints = output / "checkpoints"
    resume = ["--resume-from-checkpoint", "latest"]

    def freeze(point: str, hit: int, *extra: str) -> int:
        return frozen_at(point, hit, SCRIPT, ["--dataset", dataset, "--output-dir", output, *TRAIN, *extra],
                         env=offline_env(), log=tmp_path / "log.txt")  # fmt: skip

    # 1. Mid-step: step 3's gradients are computed, its update not applied; step_2 is the newest checkpoint.
    pid = freeze("optimizer_step", 3)
    assert names(checkpoints) == ["step_2"]
    kill(pid)

    # 2. The best-model swap: resumed from step_2, the run next beats its best validation NDCG@10, moves the old
    # best/ aside and is killed before renaming the new one in.
    pid = freeze(r"rename:^\.best\.tmp-", 1, *resume)
    aside = [p.name for p in output.iterdir() if p.name.startswith(".best.")]
    assert not (output / "best").exists() and sorted(n.split("-")[0] for n in aside) == [".best.old", ".best.tmp"]
    kill(pid)

    # 3. save_state: the next checkpoint's weights are written into its temporary folder, nothing else is.
    pid = freeze(r"save_file:/\.step_\d+\.partial/", 1, *resume)
    partial = [p for p in checkpoints.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and names(partial[0]) == ["model.safetensors"]
    assert all((p / "trainer_state.json").is_file() for p in checkpoints.iterdir() if p.name.startswith("step_"))
    kill(pid)

    train(dataset, output, *resume)
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["global_step"] == 8 and best_saves(output) == best_saves(uninterrupted)
    for kind in ("final", "best"):
        expected, resumed = weights(uninterrupted / kind), weights(output / kind)
        assert expected.keys() == resumed.keys()
        different = [name for name in expected if not torch.equal(expected[name], resumed[name])]
        assert not different, (kind, different)
    assert names(checkpoints) == names(uninterrupted / "checkpoints") == ["step_6", "step_8"]
    assert not [str(p) for p in output.rglob("*") if LEFTOVER.search(p.name)]
