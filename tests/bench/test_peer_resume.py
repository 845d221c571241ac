"""A RecTools peer fit killed between epochs resumes from its --state-dir and ends as the uninterrupted fit does;
long histories reach the fit whole, as consecutive pseudo-user chunks.

Runs bench/peers/rectools_peer.py in its own virtualenv (bench/peers/setup_rectools.sh); skipped where that
virtualenv is missing, as in CI: the peer is a benchmark dependency, not one of the package's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / "bench" / "peers" / ".venv-rectools" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "peers" / "rectools_peer.py"

sys.path.insert(0, str(ROOT / "tests"))

from killpoint import frozen_at, kill  # noqa: E402

pytestmark = pytest.mark.skipif(
    not PEER_PYTHON.is_file() or subprocess.run([str(PEER_PYTHON), "-c", "import rectools, safetensors"],
                                                capture_output=True).returncode != 0,
    reason="the RecTools peer virtualenv is not set up (bash bench/peers/setup_rectools.sh)",
)


@pytest.fixture(scope="module")
def slice_dataset(sample_data_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("peer") / "dataset"
    subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), "--source", "tmdb", "--data-dir",
                    str(sample_data_dir), "--output", str(output)], check=True, capture_output=True)
    return output


def peer_argv(dataset: Path, output: Path, state: Path) -> list[str]:
    """Small and fast, with a learning rate high enough that validation moves every epoch, and a patience that
    stops the fit early: the resumed part has to carry the curve, the best weights and the early-stopping count."""
    return ["--dataset", str(dataset), "--model", "sasrec", "--n-factors", "16", "--session-max-len", "20",
            "--max-epochs", "8", "--patience", "3", "--lr", "0.02", "--batch-size", "16", "--output", str(output),
            "--state-dir", str(state)]


def run_peer(argv: list[str]) -> None:
    subprocess.run([str(PEER_PYTHON), str(PEER_SCRIPT), *argv], check=True, capture_output=True)


def test_a_peer_killed_between_epochs_resumes_and_ends_as_the_uninterrupted_fit(slice_dataset, tmp_path):
    whole, resumed = tmp_path / "whole.json", tmp_path / "resumed.json"
    run_peer(peer_argv(slice_dataset, whole, tmp_path / "whole.state"))
    expected = json.loads(whole.read_text())
    assert not (tmp_path / "whole.state").exists()  # removed once the output is written
    assert expected["resumed_after_epochs"] == []
    assert 3 <= expected["epochs_run"] < 8  # early stopping ended it, after the epoch the kill lands in
    data = expected["data"]  # histories far longer than 21 events: every event still reaches the fit
    assert data["pseudo_users"] > 0 and data["training_events_in_fit"] == data["training_events"] > 0
    assert data["training_movies_in_fit"] == data["training_movies"] and data["fit_rows"] > data["training_events"]

    state = tmp_path / "resumed.state"
    argv = peer_argv(slice_dataset, resumed, state)
    pid = frozen_at(r"rename:^\.epoch-0003\.", 1, PEER_SCRIPT, argv, env=dict(os.environ), log=tmp_path / "killed.log",
                    python=str(PEER_PYTHON))
    kill(pid)  # epoch 3 is written under its temporary name, not yet renamed: epoch 2 is the newest complete one
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith(".")) == ["epoch-0002"]
    assert not resumed.exists()

    run_peer(argv)
    got = json.loads(resumed.read_text())
    assert got["resumed_after_epochs"] == [2]
    timing = ("train_cpu_seconds", "train_wall_seconds", "validation_curve_cpu_seconds", "resumed_after_epochs")
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}
    assert len(got["validation_curve_cpu_seconds"]) == got["epochs_run"]
    assert got["validation_curve_cpu_seconds"] == sorted(got["validation_curve_cpu_seconds"])  # adds up over pieces
    assert not state.exists()


CHUNKS = """
import sys
sys.path.insert(0, {bench!r})
import numpy as np, pandas as pd
from rectools import Columns
from rectools_peer import chunk_ranges, pseudo_user_chunks

for length in range(0, 30):
    ranges = chunk_ranges(length, chunk=5)
    targets = [p for start, stop in ranges for p in range(start + 1, stop)]  # next-event targets of each chunk
    assert sorted(targets) == list(range(1, length)), (length, ranges)
    assert all(2 <= stop - start <= 5 for start, stop in ranges) and (not ranges or ranges[0][1] == length)
train = pd.DataFrame({{Columns.User: [7] * 12 + [3] * 2, Columns.Item: np.arange(14), "position": [*range(12), 0, 1]}})
chunks = pseudo_user_chunks(train, chunk=5, first_pseudo_user=100)
newest = chunks[chunks[Columns.User] == 7]
assert newest["position"].tolist() == [7, 8, 9, 10, 11] and set(chunks["real_user"]) == {{7, 3}}
assert sorted(set(chunks[Columns.User])) == [3, 7, 100, 101] and len(chunks[chunks[Columns.User] == 3]) == 2
print("ok")
"""


def test_chunks_make_every_event_after_a_users_first_a_target_once():
    done = subprocess.run([str(PEER_PYTHON), "-c", CHUNKS.format(bench=str(ROOT / "bench" / "peers"))],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
