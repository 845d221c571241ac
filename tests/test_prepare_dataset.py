"""Tests for prepare_dataset.py: real Kaggle sample, malformed input, synthetic, MovieLens layouts, pure functions."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare_dataset as pdx

MOVIES_FILE = Path("movies/train-00000-of-00001.parquet")
SEQUENCES_FILE = Path("sequences/train-00000-of-00001.parquet")
RATINGS_SMALL_SHA256 = "821795331fd974bbe7a8416f2a7eec2b548a485dedb47a073580b0a9a8a0a8d2"


def read_movies(folder: Path) -> pa.Table:
    return pq.read_table(folder / MOVIES_FILE)


def read_sequences(folder: Path) -> pa.Table:
    return pq.read_table(folder / SEQUENCES_FILE)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# Real Kaggle sample (prepared once per module)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_prepared(sample_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "dataset"
    summary = pdx.prepare("tmdb", out, sample_data_dir)
    return summary, out


def test_sample_all_ratings_accounted_for(sample_prepared, sample_data_dir):
    summary, out = sample_prepared
    raw = pd.read_csv(sample_data_dir / "ratings_small.csv")
    counts = summary.counts
    ratings_skipped = sum(v for k, v in summary.skipped.items() if k.startswith("ratings/"))
    assert counts["ratings_read"] == len(raw) == 100_004
    assert counts["ratings_kept"] + ratings_skipped == 100_004
    assert counts["users"] == 671 and summary.num_users == 672
    seqs = read_sequences(out)
    assert seqs.num_rows == 671
    assert sum(len(x) for x in seqs.column("movie_index").to_pylist()) == counts["ratings_kept"]
    movies = read_movies(out)
    assert summary.num_movies == movies.num_rows == raw.movieId.nunique() == 9066
    assert set(movies.column("movie_id").to_pylist()) == set(raw.movieId.unique().tolist())
    assert movies.column("movie_index").to_pylist() == list(range(movies.num_rows))
    assert counts["movies_with_metadata"] == sum(movies.column("has_metadata").to_pylist()) == 4682
    assert summary.skipped == {
        "keywords/duplicate_id": 97,
        "links/missing_tmdb_id": 13,
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
    assert list(seqs.user_index) == list(range(1, 672))
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
    assert movies.num_rows == 9066 and seqs.num_rows == 671
    assert movies[0]["title"] == "Toy Story"
    assert "Genres: Animation, Comedy, Family." in movies[0]["text"]
    assert "Director: John Lasseter." in movies[0]["text"]


def test_sample_second_run_is_byte_identical(sample_prepared, sample_data_dir, tmp_path):
    _, out = sample_prepared
    again = tmp_path / "again"
    pdx.prepare("tmdb", again, sample_data_dir)
    assert folder_bytes(again) == folder_bytes(out)
    # Re-running into the same folder replaces it atomically and yields the same bytes.
    pdx.prepare("tmdb", again, sample_data_dir)
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
    assert (spec["num_movies"], spec["num_users"], spec["pad_index"], spec["oov_index"]) == (9066, 672, 0, 1)
    assert spec["numeric_features"]["names"] == pdx.NUMERIC_FEATURES
    assert len(spec["numeric_features"]["mean"]) == len(spec["numeric_features"]["std"]) == 7
    assert all(s > 0 for s in spec["numeric_features"]["std"])
    assert set(spec["categorical_features"]) == set(pdx.CATEGORICAL_FEATURES)
    assert set(spec["multi_valued_features"]) == set(pdx.MULTI_VALUED_FEATURES)
    for feat in [*spec["categorical_features"].values(), *spec["multi_valued_features"].values()]:
        assert feat["vocab"][:2] == ["<pad>", "<oov>"] and "min_count" in feat
    assert "Animation" in spec["multi_valued_features"]["genres"]["vocab"]
    assert spec["text"]["column"] == "text" and "{overview}" in spec["text"]["template"]
    assert spec["rating"] == {"min": 0.5, "max": 5.0}
    assert spec["splits"]["default"] == "leave_one_out"
    assert spec["source_files"]["ratings_small.csv"] == {"sha256": RATINGS_SMALL_SHA256, "bytes": 2_438_266}
    assert spec["counts"]["ratings_kept"] == 100_004

    movies = read_movies(out)
    expected = {
        "movie_index": pa.int32(), "movie_id": pa.int64(), "tmdb_id": pa.int64(), "imdb_id": pa.string(),
        "title": pa.string(), "year": pa.int32(), "genres": pa.list_(pa.string()),
        "numeric": pa.list_(pa.float32()), "text": pa.string(), "has_metadata": pa.bool_(),
        "num_ratings": pa.int32(), "cold_item": pa.bool_(),
    }  # fmt: skip
    expected |= {f"cat_{n}": pa.int32() for n in pdx.CATEGORICAL_FEATURES}
    expected |= {f"bag_{n}": pa.list_(pa.int32()) for n in pdx.MULTI_VALUED_FEATURES}
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


# ----------------------------------------------------------------------------------------------------------------
# Malformed input
# ----------------------------------------------------------------------------------------------------------------

META_HEADER = (
    "adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,overview,"
    "popularity,poster_path,production_companies,production_countries,release_date,revenue,runtime,"
    "spoken_languages,status,tagline,title,video,vote_average,vote_count"
)


def meta_row(tmdb: str, title: str, genres: str = "[{'id': 18, 'name': 'Drama'}]", overview: str = "A story.",
             budget: str = "1000", companies: str = "[]") -> str:  # fmt: skip
    return (
        f'False,,{budget},"{genres}",,{tmdb},tt00000{tmdb[:2]},en,{title},"{overview}",1.5,,"{companies}",'
        f"\"[{{'iso_3166_1': 'US', 'name': 'United States of America'}}]\",1999-05-01,0,90.0,"
        f"\"[{{'iso_639_1': 'en', 'name': 'English'}}]\",Released,,{title},False,6.5,10"
    )


def write_dirty_kaggle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings_small.csv").write_text(
        "userId,movieId,rating,timestamp\r\n"
        "1,10,4.0,100\r\n"
        "1,20,3.5,200\r\n"
        "1,30,abc,300\r\n"  # bad rating
        "1,30,7.5,300\r\n"  # out of range
        "x1,10,4.0,100\r\n"  # bad user id
        "2,1997-08-20,4.0,100\r\n"  # date-like movie id
        "2,10,4.0,notatime\r\n"  # bad timestamp
        "2,10,4.0\r\n"  # too few columns
        "2,10,4.0,100,9\r\n"  # too many columns
        "2,10,2.0,150\r\n"
        "2,20,5.0,160\r\n"
        "2,10,1.0,170\r\n"  # duplicate (2,10): this later one is kept
        "2,40,3.0,180\r\n"  # movie 40 has no link row
        "3,30,,100\r\n"  # empty rating
        "3,20,2.5,100\r\n"
        "3,30,4.0,110\r\n"  # movie 30's link has no tmdbId
    )
    (folder / "links_small.csv").write_text(
        "movieId,imdbId,tmdbId\r\n10,0000010,110\r\n20,0000020,120\r\n30,0000030,\r\nabc,1,1\r\n10,0000011,999\r\n"
    )
    rows = [
        META_HEADER,
        meta_row("110", "Ten", overview=""),  # missing overview
        meta_row(
            "120", "Twenty", genres="[{'id': 18, 'name': 'Drama'", budget="0"
        ),  # broken list, zero budget
        meta_row("1997-08-20", "Dated"),  # date-like id
        meta_row("120", "Twenty again"),  # duplicate id, first kept
        "False,oops,too,few",  # malformed row
        meta_row("130", "Thirty", companies="[{'name': 'Studio', 'id': 1}] extra"),  # broken list
    ]
    (folder / "movies_metadata.csv").write_text("\n".join(rows) + "\n")
    (folder / "keywords.csv").write_text(
        "id,keywords\n110,\"[{'id': 1, 'name': 'heist'}]\"\n110,\"[{'id': 2, 'name': 'dup'}]\"\n"
        "120,\"[{'id': 1, 'name': 'heist'}, {'id': 3 'name': 'broken'}]\"\nnotanid,[]\n"
    )
    (folder / "credits.csv").write_text(
        "cast,crew,id\n"
        "\"[{'name': 'B Actor', 'order': 1}, {'name': 'A Actor', 'order': 0}]\","
        "\"[{'job': 'Director', 'name': 'Dee Rector'}, {'job': 'Grip', 'name': 'G'}]\",110\n"
    )
    return folder


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    data = write_dirty_kaggle(tmp_path / "raw")
    summary = pdx.prepare("tmdb", tmp_path / "out", data)
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
    with pytest.raises(pdx.PrepareError, match="movies_metadata.csv"):
        pdx.prepare("tmdb", tmp_path / "out", data)
    assert (
        pdx.main(["--source", "tmdb", "--data-dir", str(data), "--output", str(tmp_path / "out"), "--quiet"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "movies_metadata.csv" in err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_column_stops_with_one_line(tmp_path, capsys):
    data = write_dirty_kaggle(tmp_path / "raw")
    (data / "ratings_small.csv").write_text("userId,movieId,stars,timestamp\n1,10,4.0,100\n")
    with pytest.raises(pdx.PrepareError, match="ratings_small.csv lacks required column 'rating'"):
        pdx.prepare("tmdb", tmp_path / "out", data)
    assert pdx.main(["--source", "tmdb", "--data-dir", str(data), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "'rating'" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


def test_failure_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    data = write_dirty_kaggle(tmp_path / "raw")
    out = tmp_path / "out"
    pdx.prepare("tmdb", out, data)
    before = folder_bytes(out)
    real_write_parquet = pdx.write_parquet
    calls = []

    def failing_write_parquet(table, path):
        calls.append(path)
        real_write_parquet(table, path)  # the movies file lands in the temp dir ...
        if len(calls) == 2:
            raise OSError("disk full")  # ... then the run dies while writing sequences

    monkeypatch.setattr(pdx, "write_parquet", failing_write_parquet)
    (data / "ratings_small.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.0,101\n")
    with pytest.raises(OSError, match="disk full"):
        pdx.prepare("tmdb", out, data)
    assert folder_bytes(out) == before  # the old dataset is untouched
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        pdx.prepare("tmdb", tmp_path / "fresh", data)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temp dirs left behind


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    data = write_dirty_kaggle(tmp_path / "raw")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(pdx.PrepareError, match="not a prepared dataset"):
        pdx.prepare("tmdb", precious, data)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_push_to_hub_uses_injected_api(tmp_path):
    class FakeApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, **kwargs):
            self.calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs))
            assert (Path(kwargs["folder_path"]) / "feature_spec.json").is_file()
            return "commit-info"

    api = FakeApi()
    data = write_dirty_kaggle(tmp_path / "raw")
    summary = pdx.prepare("tmdb", tmp_path / "out", data, push_to_hub_repo="me/movies", hub_api=api)
    assert summary.pushed_to == "me/movies"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["repo_id"] == "me/movies" and api.calls[0][1]["repo_type"] == "dataset"
    assert api.calls[0][1]["exist_ok"] is True
    upload = api.calls[1][1]
    assert upload["repo_id"] == "me/movies" and upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == tmp_path / "out"


# ----------------------------------------------------------------------------------------------------------------
# Synthetic source
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    summary = pdx.prepare("synthetic", base / "a", seed=0, raw_dir=base / "raw")
    return summary, base


def test_synthetic_shape(synthetic_prepared):
    summary, base = synthetic_prepared
    out = base / "a"
    raw = base / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["movies_metadata.csv", "keywords.csv", "credits.csv", "links_small.csv", "ratings_small.csv"]
    )
    assert "[{'id':" in (raw / "movies_metadata.csv").read_text()
    assert summary.source == summary.feature_spec["source"] == "synthetic"
    assert summary.counts["users"] == 300
    assert 20_000 <= summary.counts["ratings_kept"] <= 30_000
    assert 550 <= summary.num_movies <= 600
    assert summary.counts["movies_with_metadata"] == summary.num_movies - 5  # five rated movies lack metadata
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "feature_spec.json", "movies", "sequences"]
    movies = read_movies(out)
    seqs = read_sequences(out).to_pydict()
    assert all(np.all(np.diff(ts) >= 0) for ts in seqs["timestamp"])
    assert all(t == len(m) - 1 for t, m in zip(seqs["loo_test_position"], seqs["movie_index"], strict=True))
    assert (
        sum(movies.column("cold_item").to_pylist())
        == summary.feature_spec["splits"]["cold_items"]["num_cold_items"]
    )
    spec = summary.feature_spec
    assert len(spec["multi_valued_features"]["genres"]["vocab"]) == 2 + len(pdx.SYNTHETIC_GENRES)
    assert len(spec["multi_valued_features"]["keywords"]["vocab"]) > 50
    assert "license: cc0-1.0" in (out / "README.md").read_text()


def test_synthetic_is_deterministic_per_seed(synthetic_prepared, tmp_path):
    _, base = synthetic_prepared
    pdx.prepare("synthetic", tmp_path / "same", seed=0)
    pdx.prepare("synthetic", tmp_path / "other", seed=1)
    first = folder_bytes(base / "a")
    assert folder_bytes(tmp_path / "same") == first
    assert folder_bytes(tmp_path / "other")[str(SEQUENCES_FILE)] != first[str(SEQUENCES_FILE)]


def test_synthetic_content_beats_most_popular(synthetic_prepared):
    """A crude content profile (genres + keywords of the history) must beat most-popular on leave-one-out."""
    summary, base = synthetic_prepared
    movies = read_movies(base / "a").to_pydict()
    seqs = read_sequences(base / "a").to_pydict()
    n = summary.num_movies
    spec = summary.feature_spec["multi_valued_features"]
    features = np.zeros((n, len(spec["genres"]["vocab"]) + len(spec["keywords"]["vocab"])))
    for i, (g, k) in enumerate(zip(movies["bag_genres"], movies["bag_keywords"], strict=True)):
        features[i, g] = 2.0
        features[i, np.asarray(k, dtype=int) + len(spec["genres"]["vocab"])] = 1.0
    features[:, [0, 1]] = 0.0
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-9
    popularity = np.zeros(n)
    for items, t in zip(seqs["movie_index"], seqs["loo_test_position"], strict=True):
        popularity[np.asarray(items[:t])] += 1
    hits = Counter()
    for items, t in zip(seqs["movie_index"], seqs["loo_test_position"], strict=True):
        history, target = np.asarray(items[:t]), items[t]
        for name, scores in (("pop", popularity.copy()), ("content", features @ features[history].mean(0))):
            scores[history] = -np.inf
            hits[name] += target in np.argsort(-scores, kind="stable")[:10]
    assert hits["content"] >= 2 * hits["pop"], hits


# ----------------------------------------------------------------------------------------------------------------
# MovieLens layouts
# ----------------------------------------------------------------------------------------------------------------


def test_movielens_latest_layout(tmp_path):
    data = tmp_path / "ml-latest-small"
    data.mkdir()
    (data / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n1,6,4.0,964982224\n"
        "2,1,3.0,964982703\n2,3,2.5,964982703\n2,50,5.0,964982703\n"  # equal timestamps: file order kept
    )
    (data / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"Grumpier Old Men (1995)",Comedy|Romance\n6,Heat (1995),Action|Crime|Thriller\n'
        '50,"Usual Suspects, The (1995)",(no genres listed)\n99,Unrated (2001),Drama\n'
    )
    (data / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n3,0113228,15602\n6,0113277,\n")
    (data / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Pixar,2\n1,1,fun,3\n2,6,heist,4\n"
    )
    summary = pdx.prepare("movielens", tmp_path / "out", data, min_counts={"keywords": 1})
    assert summary.counts["ratings_kept"] == 6 and summary.counts["users"] == 2 and summary.num_movies == 4
    movies = read_movies(tmp_path / "out").to_pandas().set_index("movie_id")
    assert movies.loc[1, "title"] == "Toy Story" and movies.loc[1, "year"] == 1995
    assert list(movies.loc[1, "genres"]) == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert list(movies.loc[50, "genres"]) == [] and movies.loc[50, "title"] == "Usual Suspects, The"
    assert movies.loc[1, "tmdb_id"] == 862 and movies.loc[1, "imdb_id"] == "tt0114709"
    vocab = summary.feature_spec["multi_valued_features"]["keywords"]["vocab"]
    assert [vocab[i] for i in movies.loc[1, "bag_keywords"]] == ["pixar", "fun"]  # tags by count, then text
    assert math.isnan(movies.loc[1, "numeric"][0]) and movies.loc[1, "numeric"][6] == 1995.0
    seqs = read_sequences(tmp_path / "out").to_pandas().set_index("user_id")
    index_of = {m: i for i, m in enumerate(movies.index)}
    assert list(seqs.loc[2, "movie_index"]) == [index_of[1], index_of[3], index_of[50]]
    assert "license: other" in (tmp_path / "out" / "README.md").read_text()


def test_movielens_100k_layout(tmp_path):
    data = tmp_path / "ml-100k"
    data.mkdir()
    (data / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250940\n"
                                 "22\t377\t1\t878887116\n22\t242\tx\t878887116\n")  # fmt: skip
    flags_242 = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # Comedy
    flags_302 = "|".join(["0"] * 6 + ["1"] + ["0"] * 9 + ["1", "0", "0"])  # Crime, Thriller
    (data / "u.item").write_bytes(
        (f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{flags_242}\n"
         f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{flags_302}\n"
         f"377|Caf\xe9 Society (1995)|01-Jan-1995||http://x|{flags_242}\n").encode("latin-1")
    )  # fmt: skip
    (data / "u.user").write_text("196|49|M|writer|55105\n")
    summary = pdx.prepare("movielens", tmp_path / "out", data)
    assert summary.counts["ratings_read"] == 5 and summary.skipped == {"ratings/bad_rating": 1}
    assert summary.counts["users"] == 3 and summary.num_movies == 3
    movies = read_movies(tmp_path / "out").to_pandas().set_index("movie_id")
    assert movies.loc[242, "title"] == "Kolya" and movies.loc[242, "year"] == 1997
    assert list(movies.loc[302, "genres"]) == ["Crime", "Thriller"]
    assert movies.loc[377, "title"] == "Caf\xe9 Society"
    seqs = read_sequences(tmp_path / "out").to_pandas().set_index("user_id")
    index_of = {m: i for i, m in enumerate(movies.index)}
    assert list(seqs.loc[196, "movie_index"]) == [index_of[302], index_of[242]]  # time order
    assert list(seqs.loc[196, "loo_test_position"] for _ in [0]) == [-1]


def test_movielens_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pdx.PrepareError, match="ratings.csv"):
        pdx.prepare("movielens", tmp_path / "out", tmp_path / "empty")
    (tmp_path / "empty" / "u.data").write_text("1\t1\t3\t1\n")
    with pytest.raises(pdx.PrepareError, match="u.item"):
        pdx.prepare("movielens", tmp_path / "out", tmp_path / "empty")


# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------


def test_parse_stringified_list():
    assert pdx.parse_stringified_list("[{'id': 16, 'name': 'Animation'}]") == [
        {"id": 16, "name": "Animation"}
    ]
    assert pdx.parse_stringified_list("{'id': 1, 'name': 'Saga'}") == [{"id": 1, "name": "Saga"}]
    assert pdx.parse_stringified_list("") == [] and pdx.parse_stringified_list(None) == []
    assert pdx.parse_stringified_list(float("nan")) == [] and pdx.parse_stringified_list("[]") == []
    assert pdx.parse_stringified_list("[{'id': 16, 'name': 'Anim") is None
    assert pdx.parse_stringified_list("__import__('os').system('echo pwned')") is None  # never eval'd
    assert pdx.parse_stringified_list("0.5") is None
    assert pdx.parse_stringified_list(b"[{'name': 'x'}, 3]") == [{"name": "x"}]


def test_names_cast_and_crew():
    assert pdx.names_of([{"name": " A  B "}, {"name": ""}, {"x": 1}, {"name": "A B"}]) == ["A B"]
    cast = [{"name": "Second", "order": 1}, {"name": "First", "order": 0}, {"name": "Nobody"}]
    assert pdx.cast_names(cast) == ["First", "Second", "Nobody"]
    crew = [{"job": "Producer", "name": "P"}, {"job": "Grip", "name": "G"}, {"job": "Director", "name": "D"},
            {"job": "Director", "name": "D"}, {"job": "Screenplay", "name": "S"}]  # fmt: skip
    assert pdx.crew_tokens(crew) == ["Director:D", "Screenplay:S", "Producer:P"]


def test_parse_numbers_and_ids():
    assert (
        pdx.parse_int_id("862") == 862 and pdx.parse_int_id("862.0") == 862 and pdx.parse_int_id(862.0) == 862
    )
    assert pdx.parse_int_id(" 7 ") == 7 and pdx.parse_int_id(np.int64(5)) == 5
    for bad in ("1997-08-20", "", "abc", None, float("nan"), -1, "1e5", "8.5", True):
        assert pdx.parse_int_id(bad) is None, bad
    assert (
        pdx.parse_float("81.0") == 81.0
        and math.isnan(pdx.parse_float("x"))
        and math.isnan(pdx.parse_float(""))
    )
    assert math.isnan(pdx.parse_float("inf"))
    assert math.isnan(pdx.log1p_positive(0.0)) and pdx.log1p_positive(math.e - 1) == pytest.approx(1.0)
    assert pdx.log1p_nonnegative(0.0) == 0.0 and math.isnan(pdx.log1p_nonnegative(-1.0))
    assert pdx.parse_year("1995-10-30") == 1995 and pdx.parse_year("01-Jan-1995") == 1995
    assert pdx.parse_year("") is None and pdx.parse_year("0001-01-01") is None
    assert pdx.year_bucket(1995) == "1990s" and pdx.year_bucket(None) is None
    assert pdx.parse_movielens_title("Toy Story (1995)") == ("Toy Story", 1995)
    assert pdx.parse_movielens_title("Babylon 5") == ("Babylon 5", None)
    assert pdx.parse_movielens_title("Fawlty Towers (1975-1979)") == ("Fawlty Towers", 1975)
    assert pdx.format_imdb_id("0114709") == "tt0114709" and pdx.format_imdb_id("tt0113497") == "tt0113497"
    assert pdx.format_imdb_id("") is None


def test_vocab_and_encoding():
    vocab = pdx.build_vocab(Counter({"b": 2, "a": 2, "c": 5, "rare": 1}), min_count=2)
    assert vocab == ["<pad>", "<oov>", "c", "a", "b"]
    index = {t: i for i, t in enumerate(vocab)}
    assert pdx.encode_bag(["a", "rare", "c", "b"], index, 3) == [3, 1, 2]
    assert pdx.encode_category(None, index) == 0 and pdx.encode_category("rare", index) == 1
    assert pdx.encode_category("c", index) == 2


def test_render_text_drops_empty_parts():
    full = pdx.render_text(
        "Heat", 1995, ["Crime"], "A tagline.", "An overview.", ["heist"], ["Al"], ["Michael"]
    )
    assert (
        full
        == "Heat (1995). Genres: Crime. A tagline. An overview. Keywords: heist. Cast: Al. Director: Michael."
    )
    assert pdx.render_text("movie 7", None) == "movie 7."


def test_order_dedup_and_split_markers():
    user = np.array([2, 1, 1, 1, 2, 1])
    ts = np.array([5, 30, 10, 10, 5, 20])
    order = pdx.order_interactions(user, ts)
    assert order.tolist() == [2, 3, 5, 1, 0, 4]  # ties (rows 2, 3 and rows 0, 4) keep file order
    movie = np.array([7, 8, 9, 7, 7])
    assert pdx.latest_duplicate_mask(np.array([1, 1, 1, 1, 2]), movie).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert pdx.latest_duplicate_mask(np.array([3, 1, 3, 3]), np.array([5, 5, 5, 5])).tolist() == [
        True, False, True, False,
    ]  # fmt: skip
    assert pdx.strictly_increasing_pairs(np.array([1, 1, 2]), np.array([3, 4, 1]))
    assert not pdx.strictly_increasing_pairs(np.array([1, 1, 2]), np.array([3, 3, 1]))  # a repeat
    assert not pdx.strictly_increasing_pairs(np.array([2, 1]), np.array([1, 2]))  # not grouped by user
    assert pdx.unique_ids(np.array([9, 3, 9, 2**40])).tolist() == [3, 9, 2**40]
    valid, test = pdx.leave_one_out_positions(np.array([1, 2, 3, 10]))
    assert valid.tolist() == [-1, -1, 1, 8] and test.tolist() == [-1, -1, 2, 9]
    test_cut, valid_cut = pdx.temporal_cutoffs(np.arange(1, 11), 0.9)
    assert (test_cut, valid_cut) == (math.floor(np.quantile(np.arange(1, 11), 0.9)), 8)
    starts = pdx.first_position_after(np.array([1, 1, 1, 2, 2]), np.array([1, 5, 9, 2, 3]), 3, 4)
    assert starts.tolist() == [0, 1, 2]
    counts = np.array([10, 1, 5, 7, 4, 6, 9, 5, 8, 5, 5])
    cold = pdx.choose_cold_items(counts, 0.25, 5, seed=3)
    assert cold.sum() == 2 and np.all(counts[cold] >= 5)
    assert np.array_equal(cold, pdx.choose_cold_items(counts, 0.25, 5, seed=3))
    ids, pos = pdx.dense_index(np.array([50, 7, 50, 1_000_000_000_000]))
    assert ids.tolist() == [7, 50, 1_000_000_000_000] and pos.tolist() == [1, 0, 1, 2]


def test_cli_help_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        pdx.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--source", "--data-dir", "--ratings", "--output", "--seed", "--push-to-hub", "--min-count"):
        assert flag in out
    assert pdx._key_values(["keywords=3", "5"], "--min-count") == {"keywords": 3, "all": 5}
    with pytest.raises(pdx.PrepareError, match="unknown feature"):
        pdx._merge_options(pdx.DEFAULT_MIN_COUNT, {"nope": 1}, "--min-count")


def test_cli_synthetic_run(tmp_path, capsys):
    assert pdx.main(["--source", "synthetic", "--output", str(tmp_path / "ds"), "--quiet",
                     "--synthetic-users", "40", "--synthetic-movies", "80", "--min-count", "keywords=1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ratings_kept" in out and "users" in out
    spec = json.loads((tmp_path / "ds" / "feature_spec.json").read_text())
    assert spec["counts"]["users"] == 40 and spec["multi_valued_features"]["keywords"]["min_count"] == 1
    assert os.listdir(tmp_path) == ["ds"]
