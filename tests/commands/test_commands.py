"""The user-facing commands on a small synthetic dataset with a tiny, untrained model: evaluate_fusionrec.py (metrics
checked against a brute-force reference, FAISS against exact search), recommend.py, export_embeddings.py (resumable),
and their one-line answers to bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from configuration_fusionrec import FusionRecConfig
from fusionrec import evaluation, export, recommend
from fusionrec.cli import format_time, open_session, parse_date
from fusionrec.data.sequences import UserSequence, evaluation_examples
from fusionrec.errors import CommandError
from fusionrec.retrieval import ExactSearch, catalog_vectors, user_vectors
from modeling_fusionrec import FusionModel

REPO_ROOT = Path(__file__).resolve().parents[2]
K_VALUES = (10, 20)
NUM_THREADS = torch.get_num_threads()
MAX_HISTORY = 8  # shorter than every synthetic history: exclusion and as-of must still use the whole history


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    from fusionrec.data.prepare import prepare

    output = tmp_path_factory.mktemp("data") / "synthetic"
    prepare("synthetic", output, synthetic_users=40, synthetic_movies=80, synthetic_ratings_per_user=15)
    return output


def _save_model(directory: Path, dataset_dir: Path, **overrides) -> Path:
    config = FusionRecConfig.from_feature_spec(
        dataset_dir,
        hidden_size=32,
        fusion_hidden_size=32,
        use_text=False,
        user_num_layers=1,
        user_num_heads=2,
        max_history_length=MAX_HISTORY,
        dropout=0.0,
        **overrides,
    )
    torch.manual_seed(0)
    FusionModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, dataset_dir) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), dataset_dir)


@pytest.fixture(scope="session")
def session(model_dir, dataset_dir):
    return open_session(model_dir, dataset_dir)


@pytest.fixture(scope="session")
def report(tmp_path_factory, model_dir, dataset_dir) -> tuple[dict, str]:
    """The evaluation command run in-process on all three splits (metrics through the evaluate module)."""
    output = tmp_path_factory.mktemp("eval") / "results.json"
    argv = ["--model", str(model_dir), "--dataset", str(dataset_dir), "--split", "all", "--output", str(output)]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert evaluation.main([*argv, "--no-progress"]) == 0
    return json.loads(output.read_text()), printed.getvalue()


def brute_force(session, split: str) -> dict[str, float]:
    """Score every movie with numpy, drop every movie the user rated before the target (and non-candidates), rank,
    and compute Recall/NDCG by hand. The user vector is read as of the last history event (PROTOCOL.md)."""
    model = session.model
    catalog = session.catalog
    if split == "cold_items":  # a held-out movie stands for a new one: no votes, popularity or revenue yet
        numeric = catalog.numeric.clone()
        names = session.spec["numeric_features"]["names"]
        for name in session.spec["numeric_features"]["post_release"]:
            numeric[catalog.cold_item, names.index(name)] = float("nan")
        catalog = dataclasses.replace(catalog, numeric=numeric)
    movies = catalog_vectors(model, catalog).numpy()
    cold = session.catalog.cold_item.numpy()
    examples = evaluation_examples(session.rows, split, "test", cold)
    sequence_of = {row["user_index"]: row["movie_index"] for row in session.rows}
    ranks = []
    for history, target in zip(examples.histories, examples.targets, strict=True):
        sequence = sequence_of[history.user_index]
        rated_before = sequence[: int(np.flatnonzero(sequence == target)[0])]
        recent = slice(max(0, len(history.movies) - MAX_HISTORY), None)
        count = len(history.movies[recent])
        with torch.no_grad():
            user = model.calculate_user_feature(
                history_movie_indices=torch.tensor(history.movies[recent]).reshape(1, count),
                history_ratings=torch.tensor(history.ratings[recent]).reshape(1, count),
                history_timestamps=torch.tensor(history.timestamps[recent]).reshape(1, count),
                history_mask=torch.ones(1, count, dtype=torch.bool),
                movie_vectors=torch.from_numpy(movies),
                user_indices=torch.tensor([history.user_index]),
            )[0].numpy()
        scores = movies @ user
        scores[rated_before] = -np.inf
        if split == "cold_items":
            scores[~cold] = -np.inf
        ranks.append(1 + int(np.sum(scores > scores[target])))
    ranks = np.asarray(ranks, dtype=np.float64)
    result = {"num_examples": len(ranks)}
    for k in K_VALUES:
        result[f"recall@{k}"] = float(np.mean(ranks <= k))
        result[f"ndcg@{k}"] = float(np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0.0)))
    return result


def run_main(module, argv, capsys) -> tuple[int, str, str]:
    code = module.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----- evaluate_fusionrec.py -----


def test_evaluation_command_prints_a_table_and_writes_protocol_json_for_all_splits(report):
    results, printed = report
    assert list(results["splits"]) == ["leave_one_out", "temporal", "cold_items"]
    header = printed.splitlines()[1]
    assert all(name in header for name in results["splits"])
    for key in ("recall@10", "ndcg@10", "mrr@10", "coverage@10", "recall@20", "ndcg@20", "rmse"):
        assert any(line.startswith(key) for line in printed.splitlines())
    for split, metrics in results["splits"].items():
        assert metrics["num_examples"] > 0, split
        for key in ("recall", "ndcg", "mrr", "coverage"):
            for k in K_VALUES:
                assert 0.0 <= metrics[f"{key}@{k}"] <= 1.0
        assert metrics["rmse"] > 0
    assert results["metrics_backend"] == "auto" and results["index"] == "exact"
    assert {metrics["metrics_backend"] for metrics in results["splits"].values()} == {"evaluate"}  # small splits


def test_user_vectors_are_read_as_of_the_last_known_event_not_the_target_time(session):
    """The target's own time would tell the model the gap to the event it predicts (PROTOCOL.md)."""
    examples = evaluation_examples(session.rows, "leave_one_out", "test", session.catalog.cold_item.numpy())
    vectors = session.movie_vectors()
    _, _, users = evaluation.rank_examples(session.model, examples, vectors, k=10, return_user_vectors=True)
    examples.target_timestamps = examples.target_timestamps + 30 * 86_400
    _, _, shifted = evaluation.rank_examples(session.model, examples, vectors, k=10, return_user_vectors=True)
    assert torch.equal(users, shifted)
    _, _, at_target = evaluation.rank_examples(
        session.model, examples, vectors, k=10, return_user_vectors=True, query_at_target=True
    )
    assert not torch.allclose(users, at_target)


@pytest.mark.parametrize("split", ["leave_one_out", "cold_items"])
def test_metrics_equal_a_brute_force_reference(session, report, split):
    expected = brute_force(session, split)
    from_command = report[0]["splits"][split]
    cold = session.catalog.cold_item.numpy()
    examples = evaluation_examples(session.rows, split, "test", cold)
    from_training_api = evaluation.evaluate_split(session.model, session.catalog.for_split(split), examples,
                                                  k_values=K_VALUES)
    for key, value in expected.items():
        assert from_command[key] == pytest.approx(value, abs=1e-9), key
        if key != "num_examples":
            assert from_training_api[key] == pytest.approx(value, abs=1e-9), key
    if split == "cold_items":
        assert from_command["num_candidates"] == int(cold.sum())


@pytest.mark.parametrize("split", ["leave_one_out", "cold_items"])
def test_ranking_in_forked_processes_equals_one_process(session, split):
    """--processes splits the batches over forked children writing into shared tensors: the same batches, so the same
    rankings, predictions and user vectors; batches of 3 make the interleaving uneven."""
    examples = evaluation_examples(session.rows, split, "test", session.catalog.cold_item.numpy())
    vectors = session.movie_vectors(split)
    kwargs = {"k": 10, "batch_size": 3, "return_user_vectors": True}
    torch.set_num_threads(1)
    try:
        one = evaluation.rank_examples(session.model, examples, vectors, **kwargs)
        forked = evaluation.rank_examples(session.model, examples, vectors, processes=3, **kwargs)
    finally:
        torch.set_num_threads(NUM_THREADS)
    assert len(examples) > 9 and (one[0][:, 0] >= 0).all()
    np.testing.assert_array_equal(forked[0], one[0])
    np.testing.assert_array_equal(forked[1], one[1])
    assert torch.equal(forked[2], one[2])


def test_evaluate_module_and_numpy_metrics_agree(session):
    examples = evaluation_examples(session.rows, "temporal", "test", session.catalog.cold_item.numpy())
    ranked, predicted = evaluation.rank_examples(session.model, examples, session.movie_vectors(), k=20)
    kwargs = {"num_movies": len(session.catalog), "k_values": K_VALUES}
    by_module = evaluation.compute_metrics(ranked, predicted, examples, backend="evaluate", **kwargs)
    by_numpy = evaluation.compute_metrics(ranked, predicted, examples, backend="numpy", **kwargs)
    assert by_module.keys() == by_numpy.keys()
    for key in by_numpy:
        assert by_module[key] == pytest.approx(by_numpy[key], abs=1e-12), key


def test_auto_metrics_backend_leaves_the_evaluate_module_beyond_its_size_limit():
    """The module turns every ranked list into Python objects (89 s and 5.7 GB at 2.65M cold_items examples); the
    numpy functions give the same numbers (test above)."""
    limit = evaluation.EVALUATE_MODULE_MAX_EXAMPLES
    assert evaluation.resolve_metrics_backend("auto", limit) == "evaluate"
    assert evaluation.resolve_metrics_backend("auto", limit + 1) == "numpy"
    assert evaluation.resolve_metrics_backend("evaluate", limit + 1) == "evaluate"
    assert evaluation.resolve_metrics_backend("numpy", 1) == "numpy"


def test_faiss_flat_index_matches_exact_search(tmp_path, model_dir, dataset_dir, report, capsys):
    output = tmp_path / "faiss.json"
    argv = ["--model", model_dir, "--dataset", dataset_dir, "--split", "leave_one_out", "cold_items", "--index", "faiss",
            "--metrics-backend", "numpy", "--output", output, "--no-progress"]
    code, out, err = run_main(evaluation, argv, capsys)
    assert code == 0, err
    assert "faiss_recall_vs_exact@10" in out
    results = json.loads(output.read_text())
    assert results["index"] == "faiss:Flat"
    for split, metrics in results["splits"].items():
        assert metrics["faiss_recall_vs_exact@10"] == 1.0
        assert metrics["faiss_recall_vs_exact@20"] == 1.0
        exact = report[0]["splits"][split]
        for key in ("recall@10", "ndcg@20", "coverage@20"):
            assert metrics[key] == pytest.approx(exact[key], abs=1e-9)


def test_evaluation_command_runs_as_a_subprocess(tmp_path, model_dir, dataset_dir):
    output = tmp_path / "sub.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(REPO_ROOT / "evaluate_fusionrec.py"), "--model", str(model_dir), "--dataset",
               str(dataset_dir), "--split", "temporal", "--k", "5", "--output", str(output), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recall@5" in done.stdout and "temporal" in done.stdout
    assert set(json.loads(output.read_text())["splits"]["temporal"]) >= {"recall@5", "ndcg@5", "mrr@5", "coverage@5"}


# ----- recommend.py -----


def _seen(session, user_id: int) -> set[int]:
    return set(session.sequence(session.user_row(user_id)).movies.tolist())


def test_recommend_for_a_dataset_user_excludes_what_they_rated(session):
    user_id = int(session.user_ids[0])
    result = recommend.recommend(session, user_id=user_id, k=10)
    picked = [row["movie_index"] for row in result["recommendations"]]
    assert len(picked) == 10 and len(set(picked)) == 10
    assert not set(picked) & _seen(session, user_id)
    scores = [row["score"] for row in result["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    first = result["recommendations"][0]
    assert first["title"] == session.catalog.titles[first["movie_index"]]
    assert first["year"] == session.catalog.years[first["movie_index"]]


def test_recommend_for_a_typed_history(session, capsys, model_dir, dataset_dir):
    titles = pd.Series(session.catalog.titles)
    unique = [i for i in range(len(titles)) if (titles == titles[i]).sum() == 1][:3]
    tmdb = int(session.movies.loc[5, "tmdb_id"])
    typed = f"{titles[unique[0]].upper()}={4.5}, {titles[unique[1]].lower()} ({session.catalog.years[unique[1]]})=3, #7=5, tmdb:{tmdb}=2"
    result = recommend.recommend(session, history=typed, k=15)
    assert [row["movie_index"] for row in result["history"]] == [unique[0], unique[1], 7, 5]
    picked = {row["movie_index"] for row in result["recommendations"]}
    assert len(picked) == 15 and not picked & {unique[0], unique[1], 7, 5}

    code, out, err = run_main(
        recommend, ["--model", model_dir, "--dataset", dataset_dir, "--history", typed, "--k", 3], capsys
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("Top 3 for the typed history")


def test_a_title_naming_several_movies_needs_its_year(session):
    titles = pd.Series(session.catalog.titles)
    repeated = titles[titles.duplicated(keep=False)]
    if repeated.empty:
        pytest.skip("the synthetic catalog has no repeated title")
    title = repeated.iloc[0]
    indices = list(repeated[repeated == title].index)
    with pytest.raises(CommandError, match="add the year"):
        recommend.recommend(session, history=f"{title}=4", k=5)
    years = [session.catalog.years[i] for i in indices]
    if len(set(years)) == len(years):
        result = recommend.recommend(session, history=f"{title} ({years[1]})=4", k=5)
        assert result["history"][0]["movie_index"] == indices[1]


def test_as_of_equals_truncating_the_history(session):
    row = max(range(len(session.rows)), key=lambda r: len(session.rows[r]["movie_index"]))
    user_id = int(session.user_ids[row])
    sequence = session.sequence(row)
    middle = len(sequence.timestamps) // 2
    day = format_time(sequence.timestamps[middle])
    as_of = parse_date(day)
    kept = sequence.timestamps <= as_of
    assert 0 < kept.sum() < len(kept)

    result = recommend.recommend(session, user_id=user_id, k=10, as_of=as_of)
    truncated = UserSequence(sequence.user_index, sequence.movies[kept], sequence.ratings[kept], sequence.timestamps[kept])
    vectors = session.movie_vectors()
    user = user_vectors(session.model, [truncated], vectors, as_of=as_of)[0].numpy()
    scores = vectors.numpy() @ user
    scores[truncated.movies] = -np.inf
    expected = list(np.argsort(-scores, kind="stable")[:10])
    assert [r["movie_index"] for r in result["recommendations"]] == expected
    assert len(result["history"]) == int(kept.sum())
    later = set(sequence.movies[~kept].tolist()) - set(truncated.movies.tolist())
    full = recommend.recommend(session, user_id=user_id, k=10)
    assert [r["movie_index"] for r in full["recommendations"]] != expected or not later
    assert not {r["movie_index"] for r in full["recommendations"]} & later


def test_unknown_title_suggests_close_matches(session, capsys, model_dir, dataset_dir):
    title = next(t for t in session.catalog.titles if len(t) > 6)
    with pytest.raises(CommandError, match="did you mean") as error:
        recommend.recommend(session, history=f"{title[:-1]}x=4", k=5)
    assert title in str(error.value)
    code, _, err = run_main(
        recommend, ["--model", model_dir, "--dataset", dataset_dir, "--history", f"{title}zz=4"], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "did you mean" in err


# ----- export_embeddings.py -----


def _export_args(model_dir, dataset_dir, output, *extra):
    argv = ["--model", model_dir, "--dataset", dataset_dir, "--output", output, "--chunk-size", 16, "--no-progress", *extra]
    return export.build_parser().parse_args([str(a) for a in argv])


def _vectors(table: pa.Table) -> np.ndarray:
    column = table["vector"].combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)


def _dates(session) -> tuple[str, str]:
    stamps = np.sort(np.concatenate([row["timestamp"] for row in session.rows]))
    return format_time(stamps[len(stamps) // 3]), format_time(stamps[2 * len(stamps) // 3])


def test_export_writes_float16_vectors_as_of_each_date(tmp_path, session, model_dir, dataset_dir):
    early, late = _dates(session)
    output = tmp_path / "export"
    export.export(_export_args(model_dir, dataset_dir, output, "--as-of", "last", early, late), session=session)
    movies = pq.read_table(output / "movies.parquet")
    assert movies.num_rows == len(session.catalog)
    assert movies.schema.field("vector").type == pa.list_(pa.float16(), 32)
    assert movies["title"].to_pylist() == session.catalog.titles
    np.testing.assert_allclose(_vectors(movies).astype(np.float32), session.movie_vectors().numpy(), atol=1e-3)

    tables = {day: pq.read_table(output / f"users_as_of_{day}.parquet") for day in (early, late)}
    assert not (output / ".parts").exists()
    vectors = session.movie_vectors()
    changed = 0
    for day, table in tables.items():
        assert table.num_rows == len(session.rows)
        assert table.schema.field("vector").type == pa.list_(pa.float16(), 32)
        assert table["user_id"].to_pylist() == session.user_ids.tolist()
        as_of = parse_date(day)
        for row in range(len(session.rows)):
            sequence = session.sequence(row)
            kept = sequence.timestamps <= as_of
            recent = np.flatnonzero(kept)[-MAX_HISTORY:]
            count = len(recent)
            with torch.no_grad():
                direct = session.model.calculate_user_feature(
                    history_movie_indices=torch.tensor(sequence.movies[recent]).reshape(1, count),
                    history_ratings=torch.tensor(sequence.ratings[recent]).reshape(1, count),
                    history_timestamps=torch.tensor(sequence.timestamps[recent]).reshape(1, count),
                    history_mask=torch.ones(1, count, dtype=torch.bool),
                    movie_vectors=vectors,
                    user_indices=torch.tensor([sequence.user_index]),
                    as_of=as_of,
                )[0].numpy()
            np.testing.assert_allclose(_vectors(table)[row].astype(np.float32), direct, atol=2e-3)
            assert table["num_ratings"][row].as_py() == int(kept.sum())
    early_vectors, late_vectors = (_vectors(tables[d]) for d in (early, late))
    for row in range(len(session.rows)):
        stamps = session.rows[row]["timestamp"]
        between = np.any((stamps > parse_date(early)) & (stamps <= parse_date(late)))
        if between:
            changed += 1
            assert not np.array_equal(early_vectors[row], late_vectors[row])
    assert changed > 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["as_of"] == ["last rating", early, late] and manifest["dtype"] == "float16"
    last = pq.read_table(output / "users.parquet")
    assert set(last["as_of"].to_pylist()) == {"last"} and last["num_ratings"].to_pylist() == [
        len(session.rows[row]["movie_index"]) for row in range(len(session.rows))
    ]


def test_an_interrupted_export_resumes_and_gives_identical_output(tmp_path, session, model_dir, dataset_dir, monkeypatch):
    early, _ = _dates(session)
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    export.export(_export_args(model_dir, dataset_dir, fresh, "--as-of", early), session=session)

    original = export.compute_user_chunk
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "compute_user_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(_export_args(model_dir, dataset_dir, resumed, "--as-of", early), session=session)
    stem = f"users_as_of_{early}"
    staging = tmp_path / ".resumed.partial"
    assert sorted(p.name for p in (staging / ".parts" / stem).glob("part-*")) == ["part-00000.parquet"]
    assert not resumed.exists()  # the output appears whole or not at all

    calls.clear()
    monkeypatch.setattr(export, "compute_user_chunk", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    export.export(_export_args(model_dir, dataset_dir, resumed, "--as-of", early), session=session)
    assert calls and calls[0].start == 16  # the first chunk was not recomputed
    for name in ("movies.parquet", f"{stem}.parquet"):
        assert pq.read_table(resumed / name).equals(pq.read_table(fresh / name)), name
    assert not (resumed / ".parts").exists() and not staging.exists()


def test_export_in_forked_processes_writes_the_same_files(tmp_path, session, model_dir, dataset_dir):
    early, _ = _dates(session)
    one, forked = tmp_path / "one", tmp_path / "forked"
    export.export(_export_args(model_dir, dataset_dir, one, "--as-of", "last", early), session=session)
    export.export(_export_args(model_dir, dataset_dir, forked, "--as-of", "last", early, "--processes", 2), session=session)
    assert len(session.rows) > 2 * 16  # --chunk-size 16: each child writes more than one part
    for name in ("movies.parquet", "users.parquet", f"users_as_of_{early}.parquet"):
        assert pq.read_table(forked / name).equals(pq.read_table(one / name)), name


def test_export_under_bf16_autocast_moves_the_vectors_a_little(tmp_path, model_dir, dataset_dir):
    """--mixed-precision bf16 computes the towers in bfloat16 (GPU inference, or a CPU with AVX512-BF16): the vectors
    move by bfloat16 rounding, no more."""
    plain, mixed = tmp_path / "fp32", tmp_path / "bf16"
    export.export(_export_args(model_dir, dataset_dir, plain))
    export.export(_export_args(model_dir, dataset_dir, mixed, "--mixed-precision", "bf16"))
    for name in ("movies.parquet", "users.parquet"):
        exact, rounded = (_vectors(pq.read_table(folder / name)).astype(np.float32) for folder in (plain, mixed))
        assert not np.array_equal(exact, rounded), name
        np.testing.assert_allclose(rounded, exact, atol=0.05)


def test_exact_search_scores_in_float32_under_a_commands_autocast(session):
    vectors = session.movie_vectors()
    users = torch.nn.functional.normalize(torch.randn(6, vectors.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    search, exclude = ExactSearch(vectors), (np.array([0, 1, 1]), np.array([3, 4, 5]))
    expected = search.search_pairs(users, exclude, k=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ranked = search.search_pairs(users, exclude, k=10)
    np.testing.assert_array_equal(ranked[0], expected[0])
    np.testing.assert_array_equal(ranked[1], expected[1])


def test_export_command_writes_csv_on_request(tmp_path, model_dir, dataset_dir, capsys):
    output = tmp_path / "csv"
    argv = ["--model", model_dir, "--dataset", dataset_dir, "--output", output, "--format", "parquet", "csv",
            "--no-progress"]
    code, out, err = run_main(export, argv, capsys)
    assert code == 0, err
    users = pd.read_csv(output / "users.csv")
    assert list(users.columns[:6]) == ["user_index", "user_id", "as_of", "as_of_timestamp", "num_ratings", "v0"]
    assert users.shape == (40, 5 + 32) and (users["as_of"] == "last").all()
    np.testing.assert_allclose(
        users[[f"v{i}" for i in range(32)]].to_numpy(np.float32),
        _vectors(pq.read_table(output / "users.parquet")).astype(np.float32),
    )
    assert pd.read_csv(output / "movies.csv").shape[0] == 80


# ----- bad input: one line, exit code 2, no traceback -----


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, dataset_dir) -> Path:
    spec = json.loads((dataset_dir / "feature_spec.json").read_text())
    return _save_model(tmp_path_factory.mktemp("other"), dataset_dir, num_movies=spec["num_movies"] + 5)


@pytest.mark.parametrize(
    "module, extra, expected",
    [
        (recommend, ["--user-id", "987654"], "unknown user id 987654"),
        (recommend, ["--history", ""], "--history is empty"),
        (recommend, ["--history", "  "], "--history is empty"),
        (recommend, ["--user-id", "USER", "--as-of", "1990-01-01"], "no ratings on or before 1990-01-01"),
        (recommend, ["--user-id", "USER", "--as-of", "01/02/2010"], "not a date"),
        (recommend, ["--history", "#999999=4"], "no movie_index 999999"),
        (recommend, ["--history", "tmdb:1=4"], "no movie with that tmdb id"),
        (recommend, ["--history", "#1=9"], "ratings run from"),
        (evaluation, ["--dataset", "MISSING"], "dataset folder not found"),
        (export, ["--output", "OUT", "--model", "MISSING"], "model folder not found"),
        (evaluation, ["--model", "OTHER"], "feature spec differs"),
        (export, ["--output", "OUT", "--model", "OTHER"], "feature spec differs"),
        (evaluation, ["--processes", "0"], "--processes must be a positive integer"),
        (evaluation, ["--processes", "2", "--index", "faiss"], "--processes > 1 needs --index exact"),
        (export, ["--output", "OUT", "--processes", "-1"], "--processes must be a positive integer"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(
    module, extra, expected, tmp_path, model_dir, dataset_dir, other_model_dir, session, capsys
):
    replace = {
        "USER": str(int(session.user_ids[0])),
        "MISSING": str(tmp_path / "missing"),
        "OTHER": str(other_model_dir),
        "OUT": str(tmp_path / "out"),
    }
    extra = [replace.get(a, a) for a in extra]
    base = {"--model": str(model_dir), "--dataset": str(dataset_dir)}
    for flag in list(base):
        if flag in extra:
            base.pop(flag)
    argv = [item for pair in base.items() for item in pair] + extra
    if module is evaluation or module is export:
        argv.append("--no-progress")
    code, out, err = run_main(module, argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err


def test_commands_read_text_through_the_text_cache(tmp_path, dataset_dir, capsys):
    """A model with the frozen text encoder (tiny T5): the commands build the text cache once and use it."""
    from tiny import save_tiny_t5

    encoder = save_tiny_t5(tmp_path / "t5")
    config = FusionRecConfig.from_feature_spec(
        dataset_dir, hidden_size=32, fusion_hidden_size=32, use_text=True, text_encoder_name_or_path=str(encoder),
        text_hidden_size=32, text_max_length=32, perceiver_num_latents=4, perceiver_depth=1, perceiver_num_heads=2,
        perceiver_head_dim=8, user_num_layers=1, user_num_heads=2, max_history_length=MAX_HISTORY,
    )
    torch.manual_seed(0)
    FusionModel(config).save_pretrained(tmp_path / "model")
    cache = tmp_path / "cache"
    argv = ["--model", tmp_path / "model", "--dataset", dataset_dir, "--cache-dir", cache, "--user-id", 1, "--k", 3]
    code, out, err = run_main(recommend, argv, capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 2 + 3
    assert list(cache.glob("*/states.safetensors"))
