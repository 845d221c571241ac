"""The output folder is replaced atomically or not at all; the Hub push goes through the injected API."""

from __future__ import annotations

import errno

import pytest
from local_hub import LocalHub
from prepared_files import folder_bytes, write_dirty_kaggle

import fusionrec.data.prepare as prepare_module
from fusionrec.data.prepare import prepare
from fusionrec.errors import PrepareError, WriteError


def test_failure_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    data = write_dirty_kaggle(tmp_path / "raw")
    out = tmp_path / "out"
    prepare("tmdb", out, data)
    before = folder_bytes(out)
    real_write_parquet = prepare_module.write_parquet
    calls = []

    def failing_write_parquet(table, path):
        calls.append(path)
        real_write_parquet(table, path)  # the movies file lands in the temp dir ...
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk fills while writing sequences

    monkeypatch.setattr(prepare_module, "write_parquet", failing_write_parquet)
    (data / "ratings_small.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.0,101\n")
    with pytest.raises(WriteError, match=f"cannot write {out}: No space left on device; free some disk space"):
        prepare("tmdb", out, data)
    assert folder_bytes(out) == before  # the old dataset is untouched
    with pytest.raises(WriteError, match="No space left on device"):
        calls.clear()
        prepare("tmdb", tmp_path / "fresh", data)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temp dirs left behind


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    data = write_dirty_kaggle(tmp_path / "raw")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="not a prepared dataset"):
        prepare("tmdb", precious, data)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_push_to_hub_commits_the_folder_through_the_injected_api(tmp_path, classic_upload):
    api = LocalHub(fail_first=1)
    data = write_dirty_kaggle(tmp_path / "raw")
    summary = prepare("tmdb", tmp_path / "out", data, push_to_hub_repo="me/movies", hub_api=api)
    assert summary.pushed_to == "me/movies"
    assert api.created[0]["repo_id"] == "me/movies" and api.created[0]["repo_type"] == "dataset"
    assert api.created[0]["exist_ok"] is True
    assert api.attempts == 2, "the failed first attempt was retried"
    (commit,) = api.commits
    assert commit["repo_type"] == "dataset" and commit["files"] == folder_bytes(tmp_path / "out")


def test_a_push_that_keeps_failing_is_one_line_and_keeps_the_folder(tmp_path, classic_upload, monkeypatch):
    import fusionrec.hub

    monkeypatch.setattr(fusionrec.hub, "RETRY_BACKOFF", 0.01)
    data = write_dirty_kaggle(tmp_path / "raw")
    with pytest.raises(PrepareError, match=r"failed after 3 attempts \(hub unreachable \(attempt 3\)\)"):
        prepare("tmdb", tmp_path / "out", data, push_to_hub_repo="me/movies", hub_api=LocalHub(fail_first=10))
    assert (tmp_path / "out" / "feature_spec.json").is_file()
