"""prepare_dataset.py and export_embeddings.py killed with SIGKILL midway (tests/killpoint.py freezes the real script
at the point, the test looks at the disk, then kills it): the output folder is the old one, byte-identical, or
absent, never half-written; nothing of the old one is lost; the next run cleans up and writes the right output.

Two points each: after the first files of the new output are written (into the temporary folder beside it), and in
the middle of the swap (the old folder moved aside, the new one not yet renamed in).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from killpoint import frozen_at, kill
from tiny import offline_env

REPO_ROOT = Path(__file__).resolve().parents[2]
LEFTOVER = re.compile(r"\.(tmp|old|del)-\d+-[0-9a-f]+$|\.partial$")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    """What lies next to `path` that belongs to it: temporaries, moved-aside folders, staging."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def kinds(path: Path) -> list[str]:
    """The siblings' kinds: ".out.tmp-123-abcd" -> ".out.tmp"."""
    return sorted(re.sub(r"-\d+-[0-9a-f]+$", "", name) for name in siblings(path))


PREPARE = ["--source", "synthetic", "--synthetic-users", "30", "--synthetic-movies", "50",
           "--synthetic-ratings-per-user", "10", "--quiet"]  # fmt: skip


def prepare_main(*argv) -> None:
    from fusionrec.data.prepare import main

    assert main([*PREPARE, *map(str, argv)]) == 0


@pytest.mark.parametrize(
    "point, at_the_kill",
    [
        ("write_table", "old"),  # the movies table is in the temporary folder, the sequences table is not
        (r"rename:^\.out\.tmp-", "absent"),  # the old folder is aside, the new one not yet in its place
    ],
)
def test_a_killed_prepare_leaves_the_old_dataset_or_none(point, at_the_kill, tmp_path):
    out, expected = tmp_path / "out", tmp_path / "expected"
    prepare_main("--seed", 0, "--output", out)
    old = folder_bytes(out)
    prepare_main("--seed", 1, "--output", expected)
    pid = frozen_at(point, 1, REPO_ROOT / "prepare_dataset.py", [*PREPARE, "--seed", 1, "--output", out],
                    env=offline_env(), log=tmp_path / "log.txt")  # fmt: skip
    kill(pid)
    if at_the_kill == "old":
        assert folder_bytes(out) == old and kinds(out) == [".out.tmp"]
    else:
        assert not out.exists() and kinds(out) == [".out.old", ".out.tmp"]
        aside = next(p for p in tmp_path.iterdir() if p.name.startswith(".out.old-"))
        assert folder_bytes(aside) == old  # nothing of the old dataset is lost
    prepare_main("--seed", 1, "--output", out)
    assert folder_bytes(out) == folder_bytes(expected) and siblings(out) == []


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small dataset, a tiny model, and the export a killed run must reproduce."""
    from tiny import save_tiny_model

    from fusionrec.data.prepare import prepare
    from fusionrec.export import main

    root = tmp_path_factory.mktemp("export")
    prepare("synthetic", root / "dataset", synthetic_users=40, synthetic_movies=50, synthetic_ratings_per_user=10)
    model = save_tiny_model(root / "model", root / "dataset")
    common = ["--model", str(model), "--dataset", str(root / "dataset"), "--chunk-size", "8", "--no-progress"]
    assert main([*common, "--output", str(root / "expected"), "--as-of", "2015-01-01"]) == 0
    return common, root / "expected"


@pytest.mark.parametrize(
    "point, hit, at_the_kill",
    [
        ("write_table", 3, "old"),  # movies.parquet and one user part are in the staging folder, the next half-way
        (r"rename:^\.out\.partial$", 1, "absent"),  # the old export is aside, the new one not yet in its place
    ],
)
def test_a_killed_export_leaves_the_old_export_or_none(point, hit, at_the_kill, exported, tmp_path):
    from fusionrec.export import main

    common, expected = exported
    out = tmp_path / "out"
    assert main([*common, "--output", str(out)]) == 0  # an earlier export, as of each user's last rating
    old = folder_bytes(out)
    argv = [*common, "--output", out, "--as-of", "2015-01-01"]
    pid = frozen_at(point, hit, REPO_ROOT / "export_embeddings.py", argv, env=offline_env(), log=tmp_path / "log.txt")
    kill(pid)
    if at_the_kill == "old":
        assert folder_bytes(out) == old and kinds(out) == [".out.partial"]
        staged = sorted(p.name for p in (tmp_path / ".out.partial").rglob("*part-*"))
        assert staged[0].startswith(".part-00001.parquet.tmp-") and staged[1:] == ["part-00000.parquet"]
    else:
        assert not out.exists() and kinds(out) == [".out.old", ".out.partial"]
        aside = next(p for p in tmp_path.iterdir() if p.name.startswith(".out.old-"))
        assert folder_bytes(aside) == old
    assert main([str(a) for a in argv]) == 0
    assert folder_bytes(out) == folder_bytes(expected) and siblings(out) == []
    assert not [p for p in tmp_path.rglob("*") if LEFTOVER.search(p.name)]
