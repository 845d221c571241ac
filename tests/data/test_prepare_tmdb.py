"""Preparing the Kaggle files (source tmdb): the real sample (every rating accounted for, splits, schema,
byte-identical reruns), malformed rows skipped and counted, missing files and columns."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from prepared_files import folder_bytes, read_movies, read_sequences, write_dirty_kaggle

from fusionrec.data.prepare import main, prepare
from fusionrec.data.records import CATEGORICAL_FEATURES, MULTI_VALUED_FEATURES, NUMERIC_FEATURES
from fusionrec.errors import PrepareError

RATINGS_SMALL_SHA256 = "6127cad3e3959cd4c76c214b4b2c1abb075b74a7b5cb7f838341f7c9901d199a"


@pytest.fixture(scope="module")
def sample_prepared(sample_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "dataset"
    summary = prepare("tmdb", out, sample_data_dir)
    return summary, out


def test_sample_all_ratings_accounted_for(sample_prepared, sample_data_dir):
    summary, out = sample_prepared
    raw = pd.read_csv(sample_data_dir / "ratings_small.csv")
    counts = summary.counts
    ratings_skipped = sum(v for k, v in summary.skipped.items() if k.startswith("ratings/"))
    assert counts["ratings_read"] == len(raw) == 1_313
    assert counts["ratings_kept"] + ratings_skipped == 1_313
    assert counts["users"] == 59 and summary.num_users == 60
    seqs = read_sequences(out)
    assert seqs.num_rows == 59
    assert sum(len(x) for x in seqs.column("movie_index").to_pylist()) == counts["ratings_kept"]
    movies = read_movies(out)
    assert summary.num_movies == movies.num_rows == raw.movieId.nunique() == 775
    assert set(movies.column("movie_id").to_pylist()) == set(raw.movieId.unique().tolist())
    assert movies.column("movie_index").to_pylist() == list(range(movies.num_rows))
    assert counts["movies_with_metadata"] == sum(movies.column("has_metadata").to_pylist()) == 692
    assert summary.skipped == {
        "keywords/duplicate_id": 2,
        "links/missing_tmdb_id": 2,
        "movies_metadata/duplicate_id": 2,
    }
    titles = dict(zip(movies.column("movie_id").to_pylist(), movies.column("title").to_pylist(), strict=True))
    assert titles[1] == "Toy Story"
    no_meta = [m for m, h in zip(movies.column("movie_id").to_pylist(), movies.column("has_metadata").to_pylist(),
                                 strict=True) if not h]  # fmt: skip
    assert titles[no_meta[0]] == f"movie {no_meta[0]}"


def test_sample_splits_follow_protocol(sample_prepared, sample_data_dir):
    """Re-derive order, leave-one-out, temporal and cold markers from the raw CSV with plain pandas."""
    summary, out = sample_prepared
    spec = summary.feature_spec
    raw = pd.read_csv(sample_data_dir / "ratings_small.csv")
    raw["row"] = np.arange(len(raw))
    df = raw.sort_values(["userId", "timestamp", "row"]).drop_duplicates(["userId", "movieId"], keep="last")
    q = spec["splits"]["temporal"]["quantile"]
    test_cut = math.floor(df.timestamp.quantile(q))
    valid_cut = math.floor(df.timestamp[df.timestamp <= test_cut].quantile(q))
    assert (test_cut, valid_cut) == (
        spec["splits"]["temporal"]["test_cutoff"],
        spec["splits"]["temporal"]["valid_cutoff"],
    )

    movies = read_movies(out).to_pandas()
    movie_of_index = movies.movie_id.to_numpy()
    seqs = read_sequences(out).to_pandas().set_index("user_id")
    assert list(seqs.user_index) == list(range(1, 60))
    assert list(seqs.index) == sorted(raw.userId.unique())
    for user_id, group in df.groupby("userId"):
        row = seqs.loc[user_id]
        n = len(group)
        assert movie_of_index[np.asarray(row.movie_index)].tolist() == group.movieId.tolist()
        assert np.asarray(row.timestamp).tolist() == group.timestamp.tolist()
        assert np.allclose(np.asarray(row.rating), group.rating.to_numpy())
        assert row.loo_test_position == (n - 1 if n >= 3 else -1)
        assert row.loo_valid_position == (n - 2 if n >= 3 else -1)
        ts = group.timestamp.to_numpy()
        assert row.temporal_test_start == next((i for i, t in enumerate(ts) if t > test_cut), n)
        assert row.temporal_valid_start == next((i for i, t in enumerate(ts) if t > valid_cut), n)

    counts = df.movieId.value_counts()
    cold_spec = spec["splits"]["cold_items"]
    eligible = sorted(m for m, c in counts.items() if c >= cold_spec["min_interactions"])
    k = math.floor(cold_spec["fraction"] * len(eligible) + 0.5)
    picked = np.random.default_rng(cold_spec["seed"]).choice(len(eligible), size=k, replace=False)
    expected_cold = {eligible[i] for i in picked}
    assert set(movies.movie_id[movies.cold_item]) == expected_cold
    assert cold_spec["num_cold_items"] == len(expected_cold) > 0
    assert movies.set_index("movie_id").num_ratings.to_dict() == counts.to_dict()


def test_sample_loads_with_datasets(sample_prepared, tmp_path):
    datasets = pytest.importorskip("datasets")
    _, out = sample_prepared
    movies = datasets.load_dataset(str(out), "movies", cache_dir=str(tmp_path / "cache"))["train"]
    seqs = datasets.load_dataset(str(out), "sequences", cache_dir=str(tmp_path / "cache"))["train"]
    assert movies.num_rows == 775 and seqs.num_rows == 59
    assert movies[0]["title"] == "Toy Story"
    assert "Genres: Animation, Comedy, Family." in movies[0]["text"]
    assert "Director: John Lasseter." in movies[0]["text"]


def test_sample_second_run_is_byte_identical(sample_prepared, sample_data_dir, tmp_path):
    _, out = sample_prepared
    again = tmp_path / "again"
    prepare("tmdb", again, sample_data_dir)
    assert folder_bytes(again) == folder_bytes(out)
    # Re-running into the same folder replaces it atomically and yields the same bytes.
    prepare("tmdb", again, sample_data_dir)
    assert folder_bytes(again) == folder_bytes(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_sample_feature_spec_and_schema(sample_prepared):
    summary, out = sample_prepared
    spec = json.loads((out / "feature_spec.json").read_text())
    assert spec == json.loads(json.dumps(summary.feature_spec))
    for key in ("format_version", "source", "num_movies", "num_users", "pad_index", "oov_index", "numeric_features",
                "categorical_features", "multi_valued_features", "text", "rating", "time", "splits", "counts",
                "skipped", "source_files"):  # fmt: skip
        assert key in spec, key
    assert spec["format_version"] == 1 and spec["source"] == "tmdb"
    assert (spec["num_movies"], spec["num_users"], spec["pad_index"], spec["oov_index"]) == (775, 60, 0, 1)
    assert spec["numeric_features"]["names"] == NUMERIC_FEATURES
    assert len(spec["numeric_features"]["mean"]) == len(spec["numeric_features"]["std"]) == 7
    assert all(s > 0 for s in spec["numeric_features"]["std"])
    assert spec["numeric_features"]["post_release"] == ["log_revenue", "popularity", "vote_average", "log_vote_count"]
    assert set(spec["categorical_features"]) == set(CATEGORICAL_FEATURES)
    assert set(spec["multi_valued_features"]) == set(MULTI_VALUED_FEATURES)
    for feat in [*spec["categorical_features"].values(), *spec["multi_valued_features"].values()]:
        assert feat["vocab"][:2] == ["<pad>", "<oov>"] and "min_count" in feat
    assert "Animation" in spec["multi_valued_features"]["genres"]["vocab"]
    assert spec["text"]["column"] == "text" and "{overview}" in spec["text"]["template"]
    assert spec["rating"] == {"min": 0.5, "max": 5.0}
    assert spec["splits"]["default"] == "leave_one_out"
    assert spec["source_files"]["ratings_small.csv"] == {"sha256": RATINGS_SMALL_SHA256, "bytes": 31_518}
    assert spec["counts"]["ratings_kept"] == 1_313

    movies = read_movies(out)
    expected = {
        "movie_index": pa.int32(), "movie_id": pa.int64(), "tmdb_id": pa.int64(), "imdb_id": pa.string(),
        "title": pa.string(), "year": pa.int32(), "genres": pa.list_(pa.string()),
        "numeric": pa.list_(pa.float32()), "text": pa.string(), "has_metadata": pa.bool_(),
        "num_ratings": pa.int32(), "cold_item": pa.bool_(),
    }  # fmt: skip
    expected |= {f"cat_{n}": pa.int32() for n in CATEGORICAL_FEATURES}
    expected |= {f"bag_{n}": pa.list_(pa.int32()) for n in MULTI_VALUED_FEATURES}
    assert {f.name: f.type for f in movies.schema} == expected
    assert all(len(x) == 7 for x in movies.column("numeric").to_pylist())
    for name, feat in spec["multi_valued_features"].items():
        bags = movies.column(f"bag_{name}").to_pylist()
        assert max(len(b) for b in bags) <= feat["max_length"]
        assert all(0 < i < len(feat["vocab"]) for b in bags for i in b)
    for name, feat in spec["categorical_features"].items():
        assert all(0 <= i < len(feat["vocab"]) for i in movies.column(f"cat_{name}").to_pylist())
    seqs = read_sequences(out)
    assert {f.name: f.type for f in seqs.schema} == {
        "user_index": pa.int32(), "user_id": pa.int64(), "movie_index": pa.list_(pa.int32()),
        "rating": pa.list_(pa.float32()), "timestamp": pa.list_(pa.int64()), "loo_valid_position": pa.int32(),
        "loo_test_position": pa.int32(), "temporal_valid_start": pa.int32(), "temporal_test_start": pa.int32(),
    }  # fmt: skip
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: movies" in card and "config_name: sequences" in card
    assert "path: sequences/train-00000-of-00001.parquet" in card and "license: cc0-1.0" in card
    assert RATINGS_SMALL_SHA256 in card and "stable" in card
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "feature_spec.json", "movies", "sequences"]


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    data = write_dirty_kaggle(tmp_path / "raw")
    summary = prepare("tmdb", tmp_path / "out", data)
    skipped = summary.skipped
    assert summary.counts["ratings_read"] == 16
    expected_ratings = {
        "ratings/bad_rating": 2,
        "ratings/rating_out_of_range": 1,
        "ratings/bad_user_id": 1,
        "ratings/bad_movie_id": 1,
        "ratings/bad_timestamp": 1,
        "ratings/malformed_row": 2,
        "ratings/duplicate_user_movie": 1,
    }
    assert {k: v for k, v in skipped.items() if k.startswith("ratings/")} == expected_ratings
    assert summary.counts["ratings_kept"] == 16 - sum(expected_ratings.values()) == 7
    assert (
        skipped["links/bad_id"] == 1
        and skipped["links/duplicate_id"] == 1
        and skipped["links/missing_tmdb_id"] == 1
    )
    assert skipped["movies_metadata/bad_id"] == 1
    assert skipped["movies_metadata/duplicate_id"] == 1
    assert skipped["movies_metadata/malformed_row"] == 1
    assert skipped["movies_metadata/bad_genres"] == 1
    assert (
        skipped["keywords/duplicate_id"] == 1
        and skipped["keywords/bad_list"] == 1
        and skipped["keywords/bad_id"] == 1
    )
    assert summary.feature_spec["missing_values"]["overview"] == 1

    movies = read_movies(tmp_path / "out").to_pandas().set_index("movie_id")
    assert list(movies.index) == [10, 20, 30, 40]
    assert movies.loc[10, "title"] == "Ten" and movies.loc[20, "title"] == "Twenty"
    assert movies.loc[40, "title"] == "movie 40" and not movies.loc[40, "has_metadata"]
    assert pd.isna(movies.loc[40, "tmdb_id"]) and pd.isna(movies.loc[30, "tmdb_id"])
    assert math.isnan(movies.loc[20, "numeric"][0])  # zero budget = unknown
    assert list(movies.loc[20, "bag_genres"]) == []  # broken list -> empty
    assert movies.loc[10, "text"].startswith(
        "Ten (1999). Genres: Drama. Keywords: heist. Cast: A Actor, B Actor."
    )
    spec = summary.feature_spec
    cast_vocab = spec["multi_valued_features"]["cast"]["vocab"]
    assert cast_vocab == ["<pad>", "<oov>"]  # min_count 2: single-movie actors are <oov>
    assert list(movies.loc[10, "bag_cast"]) == [1, 1]
    seqs = read_sequences(tmp_path / "out").to_pandas().set_index("user_id")
    index_of = {m: i for i, m in enumerate(movies.index)}
    # user 2: (10 @150 dropped as duplicate), 20 @160, 10 @170 (rating 1.0), 40 @180
    assert list(seqs.loc[2, "movie_index"]) == [index_of[20], index_of[10], index_of[40]]
    assert list(seqs.loc[2, "rating"]) == [5.0, 1.0, 3.0]


def test_missing_file_stops_with_one_line(tmp_path, capsys):
    data = write_dirty_kaggle(tmp_path / "raw")
    (data / "movies_metadata.csv").unlink()
    with pytest.raises(PrepareError, match="movies_metadata.csv"):
        prepare("tmdb", tmp_path / "out", data)
    assert (
        main(["--source", "tmdb", "--data-dir", str(data), "--output", str(tmp_path / "out"), "--quiet"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "movies_metadata.csv" in err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_column_stops_with_one_line(tmp_path, capsys):
    data = write_dirty_kaggle(tmp_path / "raw")
    (data / "ratings_small.csv").write_text("userId,movieId,stars,timestamp\n1,10,4.0,100\n")
    with pytest.raises(PrepareError, match="ratings_small.csv lacks required column 'rating'"):
        prepare("tmdb", tmp_path / "out", data)
    assert main(["--source", "tmdb", "--data-dir", str(data), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "'rating'" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


def test_cold_items_sees_no_post_release_features_of_held_out_movies(sample_prepared):
    """PROTOCOL: a held-out movie stands for a new one, which has no votes, popularity or revenue yet."""
    from fusionrec.data.catalog import MovieCatalog
    from fusionrec.data.loading import load_tables

    _, out = sample_prepared
    movies, _ = load_tables(out)
    spec = json.loads((out / "feature_spec.json").read_text())
    catalog = MovieCatalog.from_table(movies, spec)
    post = [spec["numeric_features"]["names"].index(n) for n in spec["numeric_features"]["post_release"]]
    pre = [j for j in range(len(spec["numeric_features"]["names"])) if j not in post]
    cold = catalog.cold_item
    assert cold.any() and not catalog.numeric[cold][:, post].isnan().all()  # the snapshot has them
    assert catalog.for_split("leave_one_out") is catalog and catalog.for_split("temporal") is catalog
    seen = catalog.for_split("cold_items")
    assert seen.numeric[cold][:, post].isnan().all()
    assert torch.equal(seen.numeric[cold][:, pre].nan_to_num(-1), catalog.numeric[cold][:, pre].nan_to_num(-1))
    assert torch.equal(seen.numeric[~cold].nan_to_num(-1), catalog.numeric[~cold].nan_to_num(-1))
    assert not catalog.numeric[cold][:, post].isnan().all()  # the catalog itself is left as it was
