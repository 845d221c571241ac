"""train_accelerate.py: a tiny run learns and reloads, exact resume, 2-process CPU run, Hub upload path, bad input.

Everything is offline and tiny: a small synthetic dataset (prepare_dataset.py), 32-wide models, a few dozen steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from local_hub import LocalHub
from safetensors.torch import load_file
from tiny import free_port, offline_env, reset_accelerate_state, save_tiny_t5, train

from fusionrec.data.collator import movie_frequency
from fusionrec.data.loading import load_tables
from fusionrec.data.sequences import read_sequences, training_part
from fusionrec.training.options import build_config, build_parser, parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY = [
    "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--max-history-length", "20",
    "--batch-size", "8", "--num-negatives", "32", "--report-to", "none", "--no-progress",
]


def two_process_launch(*argv) -> list[str]:
    """`accelerate launch` of train_accelerate.py on 2 CPU processes, on a free port: the config's fixed port
    collides when two suites run on one machine at once."""
    return [ACCELERATE, "launch", "--config_file", str(REPO_ROOT / "configs" / "accelerate_cpu_2proc.yaml"),
            "--main_process_port", str(free_port()), str(REPO_ROOT / "train_accelerate.py"), *map(str, argv)]


def prepare(output: Path, *, movies: int = 120, users: int = 60) -> Path:
    subprocess.run(
        [PYTHON, str(REPO_ROOT / "prepare_dataset.py"), "--source", "synthetic", "--output", str(output), "--quiet",
         "--synthetic-users", str(users), "--synthetic-movies", str(movies), "--synthetic-ratings-per-user", "25"],
        check=True, env=offline_env(), capture_output=True,
    )
    return output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def run(argv: list[str], **kwargs) -> int:
    return train(argv, **kwargs)


def summary(output: Path) -> dict:
    return json.loads((output / "train_summary.json").read_text())


def test_tiny_run_lowers_loss_and_final_reloads_with_auto_model(dataset, tmp_path):
    from transformers import AutoModel

    encoder = save_tiny_t5(tmp_path / "t5")
    output = tmp_path / "run"
    assert run(["--dataset", dataset, "--output-dir", output, "--max-steps", 24, "--logging-steps", 4,
                "--eval-steps", 12, "--text-encoder", encoder, "--text-max-length", 16,
                "--text-cache-dir", tmp_path / "cache", "--learning-rate", "3e-3", *TINY]) == 0
    state = json.loads((output / "train_summary.json").read_text())
    assert state["global_step"] == 24 and state["finished"]
    losses = [entry["train/loss"] for entry in state["history"] if "train/loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.2, losses
    assert list((tmp_path / "cache").rglob("states.safetensors")), "the text cache was not used"

    final = output / "final"
    names = {path.name for path in final.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_fusionrec.py", "configuration_fusionrec.py", "pipeline_fusionrec.py", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".pth"))], names
    card = (final / "README.md").read_text()
    assert f"`{dataset.name}`" in card and "ndcg@10" in card and "learning_rate" in card
    assert str(tmp_path) not in card and str(dataset) not in card, "a local path in the card"
    assert {"catalog.json", "catalog_vectors.safetensors", "training_metrics.json"} <= names
    model = AutoModel.from_pretrained(final, trust_remote_code=True)
    weights = load_file(final / "model.safetensors")
    loaded = model.state_dict()
    assert weights and all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    assert model.config.use_text and model.config.text_encoder_name_or_path == str(encoder)
    # The reloaded model reproduces the run's own final validation metrics (same vectors, same rankings).
    from fusionrec.data.catalog import load_catalog
    from fusionrec.data.loading import load_tables
    from fusionrec.data.sequences import evaluation_examples, read_sequences
    from fusionrec.evaluation import evaluate_split

    catalog, _ = load_catalog(dataset, model.config, cache_root=tmp_path / "cache", show_progress=False)
    rows = read_sequences(load_tables(dataset)[1])
    examples = evaluation_examples(rows, "leave_one_out", "validation", catalog.cold_item.numpy())
    metrics = evaluate_split(model, catalog, examples)
    for name in ("ndcg@10", "recall@20", "rmse"):
        assert metrics[name] == pytest.approx(state["last_validation"][name], abs=1e-6), name
    assert (output / "best" / "model.safetensors").is_file() and state["best_step"] in (12, 24)


@pytest.mark.parametrize("table_updates", ["dense", "lazy"])
def test_resume_mid_epoch_is_bitwise_identical_to_an_uninterrupted_run(dataset, tmp_path, table_updates):
    # 16-window batches: a few batches per epoch, so step 4 is mid-epoch and step 8 is in a later epoch; dropout is
    # on (default 0.1) so the restored RNG state matters too.
    common = ["--dataset", dataset, "--max-steps", 8, "--eval-steps", 0, "--logging-steps", 4, *TINY, "--batch-size", 16,
              "--table-updates", table_updates]
    assert run([*common, "--output-dir", tmp_path / "straight"]) == 0
    interrupted = tmp_path / "interrupted"
    assert run([*common, "--output-dir", interrupted, "--stop-at-step", 4]) == 0
    assert not (interrupted / "final").exists()
    steps_per_epoch = summary(interrupted)["steps_per_epoch"]
    assert 4 % steps_per_epoch and steps_per_epoch < 8, "the stop must fall mid-epoch and resume cross an epoch"
    assert [p.name for p in (interrupted / "checkpoints").iterdir()] == ["step_4"]
    assert run([*common, "--output-dir", interrupted, "--resume-from-checkpoint", "latest"]) == 0
    assert summary(interrupted)["global_step"] == 8
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(interrupted / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    assert not different, different


def test_a_checkpoint_is_safetensors_and_json_and_an_old_pickled_one_is_not_read(dataset, tmp_path, capsys):
    """A step_N folder holds only safetensors, JSON and the config's code, each readable as its name says (resuming
    from one is exact: the test above, the plateau one below and tests/training/test_kill_resume.py). A folder in
    accelerate's save_state format stops with one line, before any of its pickles is opened."""
    common = ["--dataset", dataset, "--output-dir", tmp_path / "run", "--max-steps", 4, "--eval-steps", 0, "--no-text", *TINY]
    assert run([*common, "--stop-at-step", 2]) == 0
    step = tmp_path / "run" / "checkpoints" / "step_2"
    assert sorted(path.name for path in step.iterdir()) == [
        "config.json", "configuration_fusionrec.py", "model.safetensors", "optimizer.json", "optimizer.safetensors",
        "random_states_0.json", "random_states_0.safetensors", "scheduler.json", "trainer_state.json",
        "weight_average.safetensors",
    ]  # fmt: skip
    for path in step.iterdir():
        if path.suffix == ".json":
            assert json.loads(path.read_text()), path.name
        elif path.suffix == ".safetensors":
            assert load_file(path), path.name
    old = step.with_name("step_3")
    shutil.copytree(step, old)
    for name in ("optimizer.json", "optimizer.safetensors", "scheduler.json", "random_states_0.json",
                 "random_states_0.safetensors"):  # fmt: skip
        (old / name).unlink()
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"):
        (old / name).write_bytes(b"\x80\x04not a pickle: opening it would fail otherwise")
    capsys.readouterr()
    assert run([*common, "--resume-from-checkpoint", "latest"]) == 2
    error = one_line_error(capsys)
    assert f"--resume-from-checkpoint {old}: an accelerate save_state checkpoint, the old pickle-based format" in error
    assert "start again in a new --output-dir, or resume it with the fusionrec version that wrote it" in error


def test_a_checkpoint_started_with_another_embedding_lr_scale_says_which_to_resume_with(dataset, tmp_path, capsys):
    """Its optimizer has another number of groups: one line that names the option, not "damaged"; with the value it
    was started with, it resumes."""
    common = ["--dataset", dataset, "--output-dir", tmp_path / "run", "--max-steps", 4, "--eval-steps", 0, "--no-text", *TINY]
    assert run([*common, "--embedding-lr-scale", 1, "--stop-at-step", 2]) == 0
    capsys.readouterr()
    assert run([*common, "--resume-from-checkpoint", "latest"]) == 2
    error = one_line_error(capsys)
    assert "its optimizer has 2 parameter groups and this run's 3" in error
    assert "resume with the value it was started with" in error
    assert run([*common, "--embedding-lr-scale", 1, "--resume-from-checkpoint", "latest"]) == 0
    assert summary(tmp_path / "run")["global_step"] == 4 and summary(tmp_path / "run")["finished"]


def test_compile_captures_the_towers_whole_and_trains_to_the_same_weights(dataset, tmp_path):
    """--compile with the "eager" backend: dynamo's capture (what inductor compiles on a GPU) without code generation,
    so the test stays fast. The towers are captured without a graph break and train to the eager run's weights."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    common = ["--dataset", dataset, "--max-steps", 3, "--eval-steps", 0, "--logging-steps", 3, *TINY, "--batch-size", 16]
    assert run([*common, "--output-dir", tmp_path / "eager"]) == 0
    assert run([*common, "--output-dir", tmp_path / "compiled", "--compile", "--compile-backend", "eager"]) == 0
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters["graph_break"])
    eager = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    compiled = load_file(tmp_path / "compiled" / "final" / "model.safetensors")
    assert eager.keys() == compiled.keys()  # compiled in place: the saved names carry no _orig_mod prefix
    for name, tensor in eager.items():
        torch.testing.assert_close(compiled[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert summary(tmp_path / "compiled")["peak_rss_bytes"] > 0


def test_two_process_cpu_run_matches_one_process_with_the_same_global_batch(dataset, tmp_path):
    """2 processes x 8 windows vs 1 process x 16 windows, same seed and data order (the sampler's permutation is
    per epoch, batches 2k and 2k+1 go to the two processes). Not bitwise: each process draws its own uniform
    negatives and computes log_q from its own half-batch, DDP averages two per-process mean losses (rows weighted
    by their process's target count) and the float sums run in another order. Tolerance: validation NDCG@10 and
    Recall@10 within 0.08 absolute (60 validation users: one user's hit moves Recall@10 by 0.017, so this allows
    ~4 users' hits to differ), and both runs must have lowered their training loss."""
    common = [str(a) for a in ["--dataset", dataset, "--max-steps", 24, "--eval-steps", 0, "--logging-steps", 6,
                               "--seed", 1, *TINY, "--learning-rate", "3e-3"]]
    one = tmp_path / "one"
    assert run([*common, "--output-dir", one, "--batch-size", 16]) == 0
    two = tmp_path / "two"
    result = subprocess.run(
        two_process_launch(*common, "--output-dir", two, "--batch-size", 8),
        env=offline_env(), capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on 2 process(es)" in result.stdout
    assert "FutureWarning" not in result.stderr, result.stderr[-3000:]
    a, b = summary(one), summary(two)
    assert b["num_processes"] == 2 and b["global_step"] == 24
    for metric in ("ndcg@10", "recall@10"):
        assert abs(a["last_validation"][metric] - b["last_validation"][metric]) <= 0.08, (metric, a, b)
    for run_summary in (a, b):
        losses = [entry["train/loss"] for entry in run_summary["history"] if "train/loss" in entry]
        assert losses[-1] < losses[0], losses
    assert (two / "final" / "model.safetensors").is_file()


def test_a_two_process_run_resumed_from_its_checkpoint_ends_with_the_same_weights(dataset, tmp_path):
    """Each process saves and puts back its own RNG states (random_states_<process>), the main process the rest: a
    2-process run resumed from its mid-epoch step_4 in another folder ends bitwise where the run itself ended."""
    common = ["--dataset", dataset, "--max-steps", 8, "--eval-steps", 0, "--logging-steps", 4, *TINY]

    def launch(*argv) -> None:
        done = subprocess.run(two_process_launch(*common, *argv), env=offline_env(), capture_output=True, text=True,
                              timeout=900, cwd=REPO_ROOT)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    launch("--output-dir", tmp_path / "straight", "--checkpointing-steps", 4)
    step = tmp_path / "straight" / "checkpoints" / "step_4"
    names = {path.name for path in step.iterdir()}
    assert {f"random_states_{i}{suffix}" for i in (0, 1) for suffix in (".json", ".safetensors")} <= names
    assert all(name.endswith((".json", ".safetensors", ".py")) for name in names), names
    assert 4 % summary(tmp_path / "straight")["steps_per_epoch"], "step 4 must fall mid-epoch"
    launch("--output-dir", tmp_path / "resumed", "--resume-from-checkpoint", step)
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert not [name for name in straight if not torch.equal(straight[name], resumed[name])]


@pytest.mark.parametrize(
    ("victim", "signal_name", "error"),
    [(0, "SIGKILL", "Signal 9 (SIGKILL) received by PID {pid}"), (1, "SIGSTOP", "Timed out waiting 10000ms")],
    ids=["main-process-killed", "other-process-hangs"],
)
def test_a_dead_or_hung_process_ends_the_other_within_a_minute_with_an_error(dataset, tmp_path, victim, signal_name,
                                                                             error):
    """Once training runs, SIGKILL the main process (the other one's next collective fails at once and torchrun
    stops it) or SIGSTOP the other one (the main process's collective times out after --ddp-timeout). Either way the
    surviving process must end within 60 s and the launcher's error must say why, instead of waiting forever."""
    logs = {name: tmp_path / name for name in ("stdout", "stderr")}
    with logs["stdout"].open("w") as stdout, logs["stderr"].open("w") as stderr:
        launcher = subprocess.Popen(
            two_process_launch("--dataset", dataset, "--output-dir", tmp_path / "run", "--max-steps", 100_000,
                               "--eval-steps", 0, "--no-text", "--ddp-timeout", 10, *TINY),
            env=offline_env(), stdout=stdout, stderr=stderr, cwd=REPO_ROOT,
        )
    ranks: dict[int, psutil.Process] = {}
    try:
        started = time.monotonic()
        while "training on 2 process(es)" not in logs["stdout"].read_text():
            assert launcher.poll() is None and time.monotonic() - started < 300, logs["stderr"].read_text()[-3000:]
            time.sleep(0.2)
        ranks = {int(child.environ()["RANK"]): child for child in psutil.Process(launcher.pid).children()}
        ranks[victim].send_signal(getattr(signal, signal_name))
        signalled = time.monotonic()
        _, alive = psutil.wait_procs([ranks[1 - victim]], timeout=60)
        assert not alive, f"the surviving process still runs 60 s after the {signal_name}"
        print(f"{signal_name}: the other process ended {time.monotonic() - signalled:.1f}s after the signal")
        kill(ranks[victim])  # a stopped process would keep torchrun waiting 30 s for its SIGTERM to land
        assert launcher.wait(timeout=60) != 0
        assert error.format(pid=ranks[victim].pid) in logs["stderr"].read_text(), logs["stderr"].read_text()[-3000:]
    finally:
        for process in ranks.values():  # the ranks run in their own sessions: killing the launcher leaves them
            kill(process)
        launcher.kill()
        launcher.wait()


def kill(process: psutil.Process) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.kill()


# ----- Hub upload against a local stand-in -----


HUB_ARGS = ["--max-steps", 6, "--eval-steps", 3, "--logging-steps", 3, "--push-to-hub", "--hub-model-id", "me/fusionrec-test",
            "--hub-retry-backoff", "0.01", *TINY]


def test_hub_upload_retries_failures_and_commits_the_saved_folders(dataset, tmp_path, capsys, classic_upload):
    api = LocalHub(fail_first=2)
    output = tmp_path / "run"
    assert run(["--dataset", dataset, "--output-dir", output, "--hub-retries", 4, *HUB_ARGS], hub_api=api) == 0
    report = capsys.readouterr().out
    assert "failed (attempt 1/4: hub unreachable (attempt 1)); retrying" in report
    assert "failed (attempt 2/4" in report and "FAILED" not in report
    assert api.repos and set(api.repos) == {"me/fusionrec-test"}
    final_commit = next(c for c in api.commits if c["message"].startswith("final"))
    assert final_commit["files"]["final/model.safetensors"] == (output / "final" / "model.safetensors").read_bytes()
    assert {"final/config.json", "final/README.md", "final/modeling_fusionrec.py"} <= set(final_commit["files"])
    best_step = summary(output)["best_step"]
    best_commit = next(c for c in api.commits if c["message"].startswith(f"best: step {best_step},"))
    assert best_commit["files"]["model.safetensors"] == (output / "best" / "model.safetensors").read_bytes()
    assert summary(output)["hub_ok"] is True
    assert not (output / ".hub-staging").exists()


def test_hub_upload_that_keeps_failing_is_reported_and_leaves_the_local_copy(dataset, tmp_path, capsys, classic_upload):
    api = LocalHub(fail_first=10**6)
    output = tmp_path / "run"
    assert run(["--dataset", dataset, "--output-dir", output, "--hub-retries", 2, *HUB_ARGS], hub_api=api) == 1
    captured = capsys.readouterr()
    assert "upload of final FAILED after 2 attempts" in captured.out
    assert "Hub upload failed for" in captured.err
    assert not api.commits
    AutoModel = __import__("transformers").AutoModel
    model = AutoModel.from_pretrained(output / "final", trust_remote_code=True)
    weights = load_file(output / "final" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


# ----- bad input: one line, exit code 2 -----


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_dataset_without_feature_spec_is_one_line(tmp_path, capsys):
    assert run(["--dataset", tmp_path, "--output-dir", tmp_path / "out", "--no-text"]) == 2
    assert "feature_spec.json: not found" in one_line_error(capsys)


@pytest.mark.parametrize("option", ["--learning-rate", "--embedding-lr-scale"])
@pytest.mark.parametrize("rate", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_learning_rate_is_one_line(dataset, tmp_path, capsys, rate, option):
    assert run(["--dataset", dataset, "--output-dir", tmp_path / "out", "--no-text", option, rate]) == 2
    assert f"argument {option}: must be a number >= 0" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_the_default_batch_fits_a_dataset_with_fewer_windows_and_says_so(tmp_path, capsys):
    small = prepare(tmp_path / "small", movies=30, users=6)
    argv = ["--dataset", small, "--output-dir", tmp_path / "run", "--max-steps", 2, "--eval-steps", 0, "--no-text", *TINY]
    assert run([*argv, "--batch-size", 64]) == 0
    out = capsys.readouterr().out
    notice = next(line for line in out.splitlines() if line.startswith("--batch-size 64 is larger than"))
    windows = int(notice.split("the ")[1].split(" training")[0])
    assert 0 < windows < 64 and notice.endswith(f"using {windows}.")
    assert summary(tmp_path / "run")["batch_size"] == windows


def test_checkpoint_from_another_feature_spec_is_one_line(dataset, tmp_path, capsys):
    other = prepare(tmp_path / "other", movies=90)
    assert run(["--dataset", other, "--output-dir", tmp_path / "small", "--max-steps", 1, "--eval-steps", 0, *TINY]) == 0
    capsys.readouterr()
    assert run(["--dataset", dataset, "--output-dir", tmp_path / "out", "--init-from", tmp_path / "small" / "final",
                "--no-text"]) == 2
    assert "feature spec differs" in one_line_error(capsys)
    assert run(["--dataset", dataset, "--output-dir", tmp_path / "small", "--resume-from-checkpoint", "latest"]) == 2
    assert "no step_N checkpoint" in one_line_error(capsys)


def test_init_from_grows_a_model_trained_before_the_update_and_trains_on_the_new_folder(updated_dataset, tmp_path):
    _, old, new = updated_dataset
    common = ["--eval-steps", 0, "--no-text", "--match-bonus-factors", 1, *TINY]
    assert run(["--dataset", old, "--output-dir", tmp_path / "old", "--max-steps", 3, *common]) == 0
    before = load_file(tmp_path / "old" / "final" / "model.safetensors")
    # learning rate 0 and the match bonus as learned: the grown weights reach the saved model untouched, so the
    # growth itself is what we see
    assert run(["--dataset", new.output_dir, "--output-dir", tmp_path / "frozen", "--init-from", tmp_path / "old" / "final",
                "--max-steps", 2, "--learning-rate", 0, *common]) == 0
    grown = load_file(tmp_path / "frozen" / "final" / "model.safetensors")
    config = json.loads((tmp_path / "frozen" / "final" / "config.json").read_text())
    assert (config["num_movies"], config["num_users"]) == (new.num_movies, new.num_users)
    assert config["multi_valued_vocab_sizes"]["genres"] == len(new.feature_spec["multi_valued_features"]["genres"]["vocab"])
    assert set(grown) == set(before)
    resized = [name for name in before if grown[name].shape != before[name].shape]
    assert {"movie_tower.id_embedding.weight", "user_tower.user_embedding.weight",
            "movie_tower.bag_embeddings.genres.weight", "movie_tower.categorical_embeddings.collection.weight",
            "movie_tower.match_embeddings.collection.weight"} <= set(resized)  # fmt: skip
    for name, weight in before.items():
        if name != "movie_tower.movie_counts":
            assert torch.equal(grown[name][: len(weight)] if weight.dim() else grown[name], weight), name
    # the id gate's counts are not learned: they are the new folder's training counts
    movies, sequences = load_tables(new.output_dir)
    train_part = training_part(read_sequences(sequences), "leave_one_out", np.asarray(movies["cold_item"], dtype=bool))
    expected = torch.from_numpy(movie_frequency(train_part, new.num_movies)).to(grown["movie_tower.movie_counts"].dtype)
    assert torch.equal(grown["movie_tower.movie_counts"], expected)
    # a real run from the same start moves the weights, and its model reads the new folder
    assert run(["--dataset", new.output_dir, "--output-dir", tmp_path / "trained", "--init-from", tmp_path / "old" / "final",
                "--max-steps", 4, "--learning-rate", "3e-3", *common]) == 0
    trained = load_file(tmp_path / "trained" / "final" / "model.safetensors")
    assert not torch.equal(trained["movie_tower.id_embedding.weight"], grown["movie_tower.id_embedding.weight"])
    result = summary(tmp_path / "trained")
    assert result["finished"] and result["global_step"] == 4 and result["last_validation"]["ndcg@10"] >= 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bf16_run_on_cuda_learns_and_its_model_scores_the_same_on_cpu(dataset, tmp_path):
    output = tmp_path / "cuda"
    assert run(["--dataset", dataset, "--output-dir", output, "--max-steps", 24, "--eval-steps", 24, "--logging-steps", 4,
                "--mixed-precision", "bf16", "--no-text", *TINY]) == 0
    result = summary(output)
    losses = [entry["train/loss"] for entry in result["history"] if "train/loss" in entry]
    assert result["finished"] and losses[-1] < losses[0] - 0.2, losses
    from fusionrec.cli import open_session
    from fusionrec.data.sequences import evaluation_examples
    from fusionrec.evaluation import evaluate_split

    session = open_session(output / "final", dataset)  # on CPU, in float32
    examples = evaluation_examples(session.rows, "leave_one_out", "validation", session.catalog.cold_item.numpy())
    metrics = evaluate_split(session.model, session.catalog, examples)
    # validation reads vectors in float32 on both devices: only the kernels' rounding differs
    assert metrics["ndcg@10"] == pytest.approx(result["last_validation"]["ndcg@10"], abs=0.01)


def test_unknown_option_is_one_line_exit_2_from_the_command_line(tmp_path):
    result = subprocess.run(
        [PYTHON, str(REPO_ROOT / "train_accelerate.py"), "--dataset", str(tmp_path), "--output-dir", str(tmp_path),
         "--learning-rat", "1"],
        env=offline_env(), capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["train_accelerate.py: error: unrecognized arguments: --learning-rat 1"], result.stderr


def test_model_options_reach_the_config_and_bad_values_are_one_line(dataset, tmp_path, capsys):
    spec = json.loads((dataset / "feature_spec.json").read_text())
    options = ["--movie-id-dropout", "0.3", "--user-id-dropout", "0", "--learn-temperature", "--temperature", "0.07",
               "--perceiver-depth", "1", "--perceiver-head-dim", "8", "--dropout", "0.3", "--post-release-dropout", "0.25"]

    def config_from(*argv: str):
        args = parse_args(["--dataset", str(dataset), "--output-dir", str(tmp_path), "--no-text", *argv])
        args._resume_dir = None
        return build_config(args, spec)

    config = config_from(*options)
    assert (config.movie_id_dropout, config.user_id_dropout, config.dropout) == (0.3, 0.0, 0.3)
    assert (config.learn_temperature, config.retrieval_temperature) == (True, 0.07)
    assert (config.perceiver_depth, config.perceiver_head_dim) == (1, 8)
    assert config.post_release_dropout == 0.25 and config.post_release_feature_names == spec["numeric_features"]["post_release"]
    default = config_from()
    assert (default.movie_id_dropout, default.learn_temperature) == (0.5, False)
    assert run(["--dataset", dataset, "--output-dir", tmp_path / "bad", "--no-text", "--movie-id-dropout", "1.5"]) == 2
    assert "movie_id_dropout must be in [0, 1)" in one_line_error(capsys)


def test_help_documents_every_option():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for option in ("--dataset", "--output-dir", "--max-steps", "--seed", "--text-encoder", "--resume-from-checkpoint",
                   "--push-to-hub", "--hub-model-id", "--mixed-precision", "--gradient-accumulation-steps", "--ddp-timeout"):
        assert option in text


def test_plateau_schedule_halves_the_rate_on_each_plateau_and_resumes_exactly(dataset, tmp_path):
    common = ["--dataset", dataset, "--max-steps", 12, "--eval-steps", 1, "--patience", 0, "--logging-steps", 1, *TINY,
              "--batch-size", 16, "--lr-scheduler", "plateau", "--warmup-steps", 2, "--lr-decay-patience", 1,
              "--learning-rate", "5e-3"]
    assert run([*common, "--output-dir", tmp_path / "straight"]) == 0
    history = summary(tmp_path / "straight")["history"]
    rates = {entry["step"]: entry["train/learning_rate"] for entry in history if "train/learning_rate" in entry}
    scores = [entry["ndcg@10"] for entry in history if "ndcg@10" in entry]
    best, scale, expected = -1.0, 1.0, {}
    for step, score in enumerate(scores[:-1], start=1):  # evaluation at step s sets the rate of step s + 2's update
        scale = scale if score > best else scale / 2
        best = max(best, score)
        expected[step + 1] = 5e-3 * min(1.0, (step + 2) / 2) * scale
    assert scale < 1.0, "no plateau in 11 evaluations: the test checks nothing"
    for step, rate in expected.items():
        assert rates[step] == pytest.approx(rate), (step, rates, scores)
    interrupted = tmp_path / "interrupted"
    assert run([*common, "--output-dir", interrupted, "--stop-at-step", 6]) == 0
    assert run([*common, "--output-dir", interrupted, "--resume-from-checkpoint", "latest"]) == 0
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(interrupted / "final" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_wsd_schedule_cools_down_after_the_first_plateau_ends_the_run_there_and_resumes_exactly(dataset, tmp_path):
    """Warmup, the peak until validation first fails to improve at step s, then a half cosine to 0 over
    ceil(2.5 s) steps, where the run ends though --max-steps is far off (validation, not the cap, sets its length),
    and --patience does not end it sooner."""
    common = ["--dataset", dataset, "--max-steps", 200, "--eval-steps", 1, "--patience", 1, "--logging-steps", 1, *TINY,
              "--batch-size", 16, "--lr-scheduler", "wsd", "--warmup-steps", 2, "--lr-decay-patience", 1,
              "--lr-cooldown-fraction", "2.5", "--learning-rate", "5e-3"]
    assert run([*common, "--output-dir", tmp_path / "straight"]) == 0
    result = summary(tmp_path / "straight")
    rates = {entry["step"]: entry["train/learning_rate"] for entry in result["history"] if "train/learning_rate" in entry}
    scores = [entry["ndcg@10"] for entry in result["history"] if "ndcg@10" in entry]
    start = next(step for step, score in enumerate(scores, start=1) if score <= max(scores[: step - 1], default=-1.0))
    length = math.ceil(2.5 * start)
    assert result["global_step"] == start + length < 200 and result["stopped_early"]
    for step, rate in rates.items():  # the evaluation at step s sets the rate of step s + 2's update
        cooled = 1.0 if step <= start else 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / length)))
        assert rate == pytest.approx(5e-3 * min(1.0, (step + 1) / 2) * cooled), (step, start, rates, scores)
    assert rates[start + length] == pytest.approx(0.0, abs=1e-12)
    assert sum(0 < rates[step] < 4e-3 for step in range(start + 1, start + length)) >= 2, "no cool-down to check"
    interrupted = tmp_path / "interrupted"
    assert run([*common, "--output-dir", interrupted, "--stop-at-step", start + 1]) == 0
    assert run([*common, "--output-dir", interrupted, "--resume-from-checkpoint", "latest"]) == 0
    assert summary(interrupted)["global_step"] == start + length
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(interrupted / "final" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_full_determinism_repeats_a_two_thread_run_bit_for_bit_and_puts_torch_back(dataset, tmp_path):
    common = ["--dataset", dataset, "--max-steps", 12, "--eval-steps", 6, "--patience", 0, *TINY, "--batch-size", 16,
              "--full-determinism"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("first", "second"):
            assert run([*common, "--output-dir", tmp_path / name]) == 0
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
    first = load_file(tmp_path / "first" / "final" / "model.safetensors")
    second = load_file(tmp_path / "second" / "final" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_weight_average_is_what_a_run_validates_and_saves_and_it_resumes_exactly(dataset, tmp_path, capsys):
    common = ["--dataset", dataset, "--max-steps", 8, "--eval-steps", 4, "--patience", 0, "--logging-steps", 4, *TINY,
              "--batch-size", 16, "--weight-average-decay", "0.9"]
    assert run([*common, "--output-dir", tmp_path / "straight"]) == 0
    interrupted = tmp_path / "interrupted"
    assert run([*common, "--output-dir", interrupted, "--stop-at-step", 4]) == 0
    step = interrupted / "checkpoints" / "step_4"
    raw, average = load_file(step / "model.safetensors"), load_file(step / "weight_average.safetensors")
    assert int(average.pop("__updates__")) == 4
    assert any(not torch.equal(raw[name], average[name]) for name in average), "the average is the raw weights"
    best = load_file(interrupted / "best" / "model.safetensors")  # validated at step 4: the average was saved
    assert all(torch.equal(best[name], average[name]) for name in average)
    assert run([*common, "--output-dir", interrupted, "--resume-from-checkpoint", "latest"]) == 0
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(interrupted / "final" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    plain = tmp_path / "plain"
    assert run([*common, "--weight-average-decay", "0", "--output-dir", plain, "--stop-at-step", 4]) == 0
    capsys.readouterr()
    assert run([*common, "--output-dir", plain, "--resume-from-checkpoint", "latest"]) == 2
    assert "written without --weight-average-decay" in one_line_error(capsys)


def test_the_match_bonus_is_chosen_on_validation_and_the_saved_models_use_it(dataset, tmp_path, capsys):
    """Each validation scores the learned bonus times each factor and keeps the best NDCG@10; best/ and final/ hold
    the bonus their validation chose, and the reloaded best reproduces its validation figure."""
    from transformers import AutoModel

    from fusionrec.data.catalog import load_catalog
    from fusionrec.data.sequences import evaluation_examples
    from fusionrec.evaluation import evaluate_split

    common = ["--dataset", dataset, "--max-steps", 12, "--eval-steps", 4, "--patience", 0, *TINY, "--no-text",
              "--match-features", "original_language"]  # the tiny set's movies share no collection
    fitted, learned = tmp_path / "fitted", tmp_path / "learned"
    assert run([*common, "--output-dir", fitted, "--match-bonus-factors", "0.25", "4", "16"]) == 0
    assert run([*common, "--output-dir", learned, "--match-bonus-factors", "1"]) == 0
    evaluations = [entry for entry in summary(fitted)["history"] if "ndcg@10" in entry]
    assert len(evaluations) == 3 and all(entry["ndcg@10"] >= entry["ndcg@10_learned_bonus"] for entry in evaluations)
    as_learned = [entry for entry in summary(learned)["history"] if "ndcg@10" in entry]
    assert [entry["ndcg@10_learned_bonus"] for entry in evaluations] == [entry["ndcg@10"] for entry in as_learned]
    best = next(entry for entry in evaluations if entry["step"] == summary(fitted)["best_step"])
    assert best["ndcg@10"] > best["ndcg@10_learned_bonus"], "the test needs a best step where a factor helped"

    def bonus(folder: Path) -> float:
        return float(load_file(folder / "model.safetensors")["match_log_scale"].exp() ** 2)

    assert bonus(fitted / "best") == pytest.approx(best["match_bonus"], rel=1e-5)
    assert bonus(fitted / "final") == pytest.approx(evaluations[-1]["match_bonus"], rel=1e-5)
    model = AutoModel.from_pretrained(fitted / "best", trust_remote_code=True)
    catalog, _ = load_catalog(dataset, model.config, show_progress=False)
    examples = evaluation_examples(read_sequences(load_tables(dataset)[1]), "leave_one_out", "validation",
                                   catalog.cold_item.numpy())
    assert evaluate_split(model, catalog, examples)["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-9)


def test_the_match_channel_is_on_collection_by_default_where_content_is_read(dataset, tmp_path, capsys):
    spec = json.loads((dataset / "feature_spec.json").read_text())

    def match_of(*argv: str) -> list[str]:
        args = parse_args(["--dataset", str(dataset), "--output-dir", str(tmp_path), "--no-text", *argv])
        args._resume_dir = None
        return build_config(args, spec).match_features

    assert match_of() == ["collection"] and match_of("--match-features", "none") == []
    assert match_of("--no-content-features") == [] and match_of("--match-features", "original_language") == ["original_language"]
    assert run(["--dataset", dataset, "--output-dir", tmp_path / "bad", "--match-bonus-factors", "1", "0"]) == 2
    assert "--match-bonus-factors: each must be a number > 0" in one_line_error(capsys)


def test_ddp_timeout_must_be_positive(tmp_path, capsys):
    assert run(["--dataset", tmp_path, "--output-dir", tmp_path / "out", "--ddp-timeout", "0"]) == 2
    assert "argument --ddp-timeout: must be > 0, got 0" in one_line_error(capsys)


def test_wsd_needs_evaluations_and_a_positive_cooldown(tmp_path, capsys):
    common = ["--dataset", tmp_path, "--output-dir", tmp_path / "out", "--lr-scheduler", "wsd"]
    assert run([*common, "--eval-steps", "0"]) == 2
    assert "--lr-scheduler wsd cools down when validation stops improving: it needs --eval-steps > 0" in one_line_error(capsys)
    assert run([*common, "--lr-cooldown-fraction", "0"]) == 2
    assert "argument --lr-cooldown-fraction: must be in (0, 10]" in one_line_error(capsys)


def test_the_run_is_sized_from_the_data_unless_steps_are_given():
    from fusionrec.training.loop import MIN_EVAL_INTERVAL, run_length

    def sized(*argv, batches, patience=5):
        argv = ["--dataset", "d", "--output-dir", "o", "--patience", str(patience), *argv]
        return run_length(parse_args(argv), batches_per_epoch=batches)

    assert sized(batches=35) == (60 * 35, MIN_EVAL_INTERVAL)  # a small epoch: validation at least 50 steps apart
    # Tiny epochs (the quickstart's 6 steps): 50 steps apart, 5 validations of patience would outlast the 360-step
    # cosine, and the cap would end the run; validations come often enough for patience to span a quarter of it.
    assert sized(batches=6) == (360, 360 // (4 * 5))
    assert sized(batches=6, patience=0) == (360, MIN_EVAL_INTERVAL)  # no early stopping: nothing to fit
    assert sized("--max-epochs", "1000", batches=6) == (6000, MIN_EVAL_INTERVAL)  # a long run keeps the floor
    assert sized(batches=20_333) == (60 * 20_333, 20_333)  # a large one: once per epoch
    assert sized("--max-epochs", "2", "--gradient-accumulation-steps", "4", batches=400) == (200, 100)
    assert sized("--max-steps", "7", "--eval-steps", "0", batches=35) == (7, 0)
    assert sized("--gradient-accumulation-steps", "4", batches=3) == (60, 3)  # under one step per epoch: one


def test_the_sparse_tables_learn_at_their_own_rate_or_lazily_so_a_rarely_seen_row_moves_less():
    from tiny import tiny_config

    from fusionrec.training.optimizer import build_optimizer
    from modeling_fusionrec import FusionModel

    def optimizer(model, *flags):
        return build_optimizer(model, parse_args(["--dataset", "d", "--output-dir", "o", *flags]))

    def trajectory(*flags: str) -> tuple[torch.Tensor, float]:
        """Rows 1 and 2 of the movie-id table get a gradient at every step, row 3 once, at step 1,500: how far row
        3 travels after that one gradient (Adam's moments carry it on for tens of steps), and the final rows 1-2."""
        torch.manual_seed(0)
        model = FusionModel(tiny_config())
        adam = optimizer(model, *flags)
        table = model.movie_tower.id_embedding.weight
        before = None
        for step in range(1_700):
            adam.zero_grad()
            rows = torch.tensor([1, 2, 3] if step == 1_500 else [1, 2])
            table[rows].sum().backward()  # any loss that touches those rows
            if step == 1_500:
                before = table[3].detach().clone()
            adam.step()
        return table[1:3].detach().clone(), float((table[3].detach() - before).abs().mean())

    groups = optimizer(FusionModel(tiny_config()), "--embedding-lr-scale", "0.1").param_groups
    table_group = next(g for g in groups if any(p.shape == (40, 32) for p in g["params"]))  # the movie-id table
    assert table_group["lr"] == pytest.approx(1e-3) and {g["lr"] for g in groups} == {1e-2, 1e-3}
    default = optimizer(FusionModel(tiny_config())).param_groups
    assert sorted(g["lr"] for g in default) == pytest.approx([3e-3, 1e-2, 1e-2])
    unscaled = optimizer(FusionModel(tiny_config()), "--embedding-lr-scale", "1")
    assert len(unscaled.param_groups) == 2  # the groups of before the option, so their checkpoints resume
    (frequent, full), (_, scaled) = trajectory("--embedding-lr-scale", "1"), trajectory("--embedding-lr-scale", "0.1")
    assert full > 20 * 1e-2  # one event moved every coordinate of the row by >20 x the learning rate
    lazy_frequent, lazy = trajectory("--embedding-lr-scale", "1", "--table-updates", "lazy")
    # lazily: the one step, lr x 0.1 / sqrt(0.001 / (1 - 0.999^1501)) = 2.79 lr, and the rows seen every step as before
    assert lazy == pytest.approx(2.79e-2, rel=0.05)
    torch.testing.assert_close(lazy_frequent, frequent, rtol=1e-5, atol=1e-6)
    assert scaled == pytest.approx(full / 10, rel=0.2)


def test_touched_rows_finds_every_row_with_a_gradient_even_a_mean_free_one():
    from fusionrec.training.optimizer import touched_rows

    gradient = torch.zeros(50, 8)
    gradient[3] = torch.tensor([1.0, -1.0, 0, 0, 0, 0, 0, 0])  # what a LayerNorm sends back sums to zero
    gradient[7, 5] = 1e-30
    gradient[41] = torch.randn(8)
    gradient[42] = gradient[41] - gradient[41].mean()
    assert touched_rows(gradient).tolist() == [3, 7, 41, 42]


def test_lazy_table_rows_under_fp16_loss_scaling_take_the_unscaled_step_and_skip_an_overflow():
    from tiny import tiny_config

    from fusionrec.training.optimizer import build_optimizer
    from modeling_fusionrec import FusionModel

    def stepped(*, scale: float | None, loss_factor: float = 1.0) -> torch.Tensor:
        torch.manual_seed(0)
        model = FusionModel(tiny_config())
        adam = build_optimizer(model, parse_args(["--dataset", "d", "--output-dir", "o", "--table-updates", "lazy"]))
        table = model.movie_tower.id_embedding.weight
        loss = (table[torch.tensor([1, 3])] * torch.arange(32.0)).sum() * loss_factor
        if scale is None:
            loss.backward()
            adam.step()
        else:
            scaler = torch.amp.GradScaler("cpu", init_scale=scale)
            scaler.scale(loss).backward()
            scaler.step(adam)
        return table.detach().clone()

    torch.manual_seed(0)
    initial = FusionModel(tiny_config()).movie_tower.id_embedding.weight.detach()
    plain = stepped(scale=None)
    assert not torch.equal(plain[1], initial[1]) and torch.equal(plain[2], initial[2])  # only the rows with a gradient
    torch.testing.assert_close(stepped(scale=1024.0), plain)
    assert torch.equal(stepped(scale=1024.0, loss_factor=float("inf")), initial)  # an overflowing step is skipped
