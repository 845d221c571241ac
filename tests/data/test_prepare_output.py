"""The output folder is replaced atomically or not at all; the Hub push goes through the injected API."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepared_files import folder_bytes, write_dirty_kaggle

import fusionrec.data.prepare as prepare_module
from fusionrec.data.prepare import prepare
from fusionrec.errors import PrepareError


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
            raise OSError("disk full")  # ... then the run dies while writing sequences

    monkeypatch.setattr(prepare_module, "write_parquet", failing_write_parquet)
    (data / "ratings_small.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.0,101\n")
    with pytest.raises(OSError, match="disk full"):
        prepare("tmdb", out, data)
    assert folder_bytes(out) == before  # the old dataset is untouched
    with pytest.raises(OSError, match="disk full"):
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
    summary = prepare("tmdb", tmp_path / "out", data, push_to_hub_repo="me/movies", hub_api=api)
    assert summary.pushed_to == "me/movies"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["repo_id"] == "me/movies" and api.calls[0][1]["repo_type"] == "dataset"
    assert api.calls[0][1]["exist_ok"] is True
    upload = api.calls[1][1]
    assert upload["repo_id"] == "me/movies" and upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == tmp_path / "out"
