"""The prepare_dataset.py command line."""

from __future__ import annotations

import json
import os

import pytest

from fusionrec.data.build import merge_options
from fusionrec.data.prepare import key_values, main
from fusionrec.data.tables import DEFAULT_MIN_COUNT
from fusionrec.errors import PrepareError


def test_cli_help_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--source", "--data-dir", "--ratings", "--output", "--seed", "--push-to-hub", "--min-count"):
        assert flag in out
    assert key_values(["keywords=3", "5"], "--min-count") == {"keywords": 3, "all": 5}
    with pytest.raises(PrepareError, match="unknown feature"):
        merge_options(DEFAULT_MIN_COUNT, {"nope": 1}, "--min-count")


def test_cli_synthetic_run(tmp_path, capsys):
    assert main(["--source", "synthetic", "--output", str(tmp_path / "ds"), "--quiet",
                     "--synthetic-users", "40", "--synthetic-movies", "80", "--min-count", "keywords=1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ratings_kept" in out and "users" in out
    spec = json.loads((tmp_path / "ds" / "feature_spec.json").read_text())
    assert spec["counts"]["users"] == 40 and spec["multi_valued_features"]["keywords"]["min_count"] == 1
    assert os.listdir(tmp_path) == ["ds"]
