"""prepare_dataset.py --update: a folder grows by new users, movies, ratings and tokens without moving any stored
index, vocabulary entry or statistic; whole current files and deltas give the same tables; lineage is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from prepared_files import folder_bytes, read_movies, read_sequences
from updates import NEW_GENRE, NEW_KEYWORD, write_update_sources

from fusionrec.data.loading import load_tables
from fusionrec.data.prepare import prepare
from fusionrec.data.update import dataset_checksum, spec_sizes
from fusionrec.errors import PrepareError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folders(updated_dataset, tmp_path_factory):
    """(sources, old folder, update with the whole current files, update with only the new rows, fresh prepare of
    the current files)."""
    sources, old, full = updated_dataset
    root = tmp_path_factory.mktemp("update-more")
    delta = prepare(output=root / "prepared-delta", data_dir=sources.delta, update_from=old)
    fresh = root / "prepared-fresh"
    prepare("tmdb", fresh, sources.full)
    return sources, old, full, delta, fresh


def spec_of(folder: Path) -> dict:
    return json.loads((folder / "feature_spec.json").read_text())


def ratings_by_user(folder: Path) -> dict[int, set]:
    sequences, movies = read_sequences(folder).to_pydict(), read_movies(folder).to_pydict()
    movie_ids = movies["movie_id"]
    return {
        user: {(movie_ids[m], r, t) for m, r, t in zip(ms, rs, ts, strict=True)}
        for user, ms, rs, ts in zip(
            sequences["user_id"], sequences["movie_index"], sequences["rating"], sequences["timestamp"], strict=True
        )
    }


def test_update_keeps_every_stored_index_vocabulary_entry_and_statistic(folders):
    sources, old, full, _, _ = folders
    new = full.output_dir
    old_spec, new_spec = spec_of(old), spec_of(new)
    old_movies, new_movies = read_movies(old), read_movies(new)
    n = old_movies.num_rows
    assert new_movies.num_rows == n + len(sources.new_movie_ids)
    unchanged = [c for c in old_movies.column_names if c not in ("num_ratings", "cold_item", "numeric")]
    assert new_movies.slice(0, n).select(unchanged).equals(old_movies.select(unchanged))
    numeric = [np.stack(t["numeric"].to_numpy(zero_copy_only=False)) for t in (new_movies.slice(0, n), old_movies)]
    assert np.array_equal(*numeric, equal_nan=True)  # NaN = missing, which Table.equals calls unequal
    assert new_movies["movie_index"].to_pylist() == list(range(new_movies.num_rows))
    assert sorted(new_movies["movie_id"].to_pylist()[n:]) == sorted(sources.new_movie_ids)
    # every stored cold movie stays cold, every warm one warm
    assert new_movies["cold_item"].to_pylist()[:n] == old_movies["cold_item"].to_pylist()
    old_users, new_users = read_sequences(old), read_sequences(new)
    assert new_users["user_id"].to_pylist()[: old_users.num_rows] == old_users["user_id"].to_pylist()
    assert new_users["user_index"].to_pylist() == list(range(1, new_users.num_rows + 1))
    assert sorted(new_users["user_id"].to_pylist()[old_users.num_rows :]) == sources.new_user_ids
    # old users got new ratings, all of them after what was stored
    grew = pc.list_value_length(new_users["movie_index"]).to_numpy()[: old_users.num_rows] > pc.list_value_length(
        old_users["movie_index"]
    ).to_numpy()
    assert grew.sum() > 10
    for part in ("categorical_features", "multi_valued_features"):
        for name, feature in old_spec[part].items():
            grown = new_spec[part][name]["vocab"]
            assert grown[: len(feature["vocab"])] == feature["vocab"], name
    genres, keywords = new_spec["multi_valued_features"]["genres"]["vocab"], new_spec["multi_valued_features"]["keywords"]["vocab"]
    assert NEW_GENRE not in old_spec["multi_valued_features"]["genres"]["vocab"] and genres[-1] == NEW_GENRE
    assert NEW_KEYWORD not in old_spec["multi_valued_features"]["keywords"]["vocab"]
    assert NEW_KEYWORD not in keywords, "keywords need 2 movies (min_count 2); one new movie is not enough"
    documentary = genres.index(NEW_GENRE)
    assert any(documentary in bag for bag in new_movies["bag_genres"].to_pylist()[n:])
    for key in ("mean", "std", "names"):
        assert new_spec["numeric_features"][key] == old_spec["numeric_features"][key]


def test_update_records_its_lineage_in_the_spec_and_the_card(folders):
    sources, old, full, _, _ = folders
    new, spec = full.output_dir, full.feature_spec
    lineage = spec["lineage"]
    assert lineage["previous"]["sha256"] == dataset_checksum(old) and lineage["previous"]["folder"] == old.name
    assert lineage["ancestors"] == [{"sha256": dataset_checksum(old), **spec_sizes(spec_of(old))}]
    added = lineage["added"]
    assert added["users_added"] == len(sources.new_user_ids) and added["movies_added"] == len(sources.new_movie_ids)
    assert added["ratings_replaced"] == 1
    assert added["ratings_unchanged"] == spec_of(old)["counts"]["ratings_kept"]
    assert spec["counts"]["ratings_kept"] == spec_of(old)["counts"]["ratings_kept"] + added["ratings_added"]
    assert added["vocabulary"]["genres"] == 1
    assert sum(added["vocabulary"].values()) == sum(
        len(f["vocab"]) for p in ("categorical_features", "multi_valued_features") for f in spec[p].values()
    ) - sum(len(f["vocab"]) for p in ("categorical_features", "multi_valued_features") for f in spec_of(old)[p].values())
    card = (new / "README.md").read_text()
    assert dataset_checksum(old) in card and "Updated from" in card
    movies, sequences = load_tables(new)
    assert len(movies) == spec["num_movies"] and len(sequences) == spec["num_users"] - 1


def test_update_holds_the_same_ratings_as_a_fresh_prepare_of_the_current_files(folders):
    sources, _, full, _, fresh = folders
    merged, expected = ratings_by_user(full.output_dir), ratings_by_user(fresh)
    assert merged == expected
    user, movie = sources.changed_pair
    latest = [r for m, r, _ in merged[user] if m == movie]
    assert len(latest) == 1 and latest[0] in (5.0, 1.0)


def test_whole_current_files_and_only_the_new_rows_give_the_same_tables_and_reruns_are_identical(folders, tmp_path):
    sources, old, full, delta, _ = folders
    a, b = folder_bytes(full.output_dir), folder_bytes(delta.output_dir)
    for name in ("movies/train-00000-of-00001.parquet", "sequences/train-00000-of-00001.parquet"):
        assert a[name] == b[name], name
    assert delta.feature_spec["lineage"]["added"]["ratings_unchanged"] == 0
    again = prepare(output=tmp_path / "again", data_dir=sources.full, update_from=old)
    assert folder_bytes(again.output_dir) == a


def test_new_movies_take_the_seeded_cold_draw_among_themselves(tmp_path):
    sources = write_update_sources(tmp_path, users=80, movies=120)
    old = tmp_path / "old-prepared"
    prepare("tmdb", old, sources.old, cold_fraction=0.5, cold_min_interactions=2)
    new = prepare(output=tmp_path / "new-prepared", data_dir=sources.full, update_from=old)
    movies = read_movies(new.output_dir).to_pydict()
    n = read_movies(old).num_rows
    added_counts = np.asarray(movies["num_ratings"][n:])
    added_cold = np.asarray(movies["cold_item"][n:])
    eligible = int((added_counts >= 2).sum())
    assert eligible and added_cold.sum() == int(np.floor(0.5 * eligible + 0.5))
    assert not added_cold[added_counts < 2].any()
    assert new.feature_spec["splits"]["cold_items"]["num_cold_items"] == sum(movies["cold_item"])


def test_update_refuses_other_settings_and_non_dataset_folders(folders, tmp_path):
    sources, old, _, _, _ = folders
    with pytest.raises(PrepareError, match="--cold-fraction 0.3 differs from .*0.1"):
        prepare(output=tmp_path / "x", data_dir=sources.full, update_from=old, cold_fraction=0.3)
    with pytest.raises(PrepareError, match="--source movielens differs"):
        prepare("movielens", tmp_path / "x", sources.full, update_from=old)
    with pytest.raises(PrepareError, match="no feature_spec.json"):
        prepare(output=tmp_path / "x", data_dir=sources.full, update_from=sources.full)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "prepare_dataset.py"), "--update", str(old), "--data-dir", str(sources.full),
         "--output", str(tmp_path / "y"), "--min-count", "genres=3", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--min-count genres=3 differs" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
