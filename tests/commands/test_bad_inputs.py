"""Bad input to the five commands, as a table: one case per line (the command, what is wrong, how the input is made
and the options given, what must happen). A bad file, folder or option stops the command with exit code 2 and ONE
line on stderr naming what is wrong and the fix; a malformed row in real data is skipped and counted (exit code 0,
the reason and the count in the printed summary and in feature_spec.json). For every case: no traceback anywhere,
and after a failure every file and folder of the case's workspace is as it was (nothing half-written or temporary
left behind, the earlier outputs at the target byte-identical).

Each case gets a workspace holding copies of the inputs (raw Kaggle-schema CSVs, a prepared dataset, a tiny model, a
finished training run, an earlier export and evaluation report) and mutates them. Most cases run the command's
`main(argv)` in-process; the `SCRIPT` ones run the real script in a subprocess. Full disk is real there: a file-size
limit (RLIMIT_FSIZE) makes the kernel refuse any write past the limit, for root too ("File too large"). A read-only
folder cannot be made for root (tests run as root here and in CI, and chmod does not stop root), so READ_ONLY cases
make the os calls that create, rename or delete entries in the workspace raise EACCES, as the kernel does for any
other user; DISK_FULL_AT_RENAME cases make renames in it raise ENOSPC (a rename can need a new directory block).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
from tiny import offline_env

from fusionrec import evaluation, export, recommend
from fusionrec.data import prepare as prepare_module
from fusionrec.data.sources.synthetic import generate_synthetic
from fusionrec.training import loop

REPO_ROOT = Path(__file__).resolve().parents[2]
MAINS = {"prepare": prepare_module.main, "train": loop.main, "evaluate": evaluation.main,
         "recommend": recommend.main, "export": export.main}  # fmt: skip
SCRIPTS = {"prepare": "prepare_dataset.py", "train": "train_accelerate.py", "evaluate": "evaluate_fusionrec.py",
           "recommend": "recommend.py", "export": "export_embeddings.py"}  # fmt: skip
TINY = "--hidden-size 32 --num-layers 1 --num-heads 2 --max-history-length 12 --batch-size 8 --num-negatives 16 " \
       "--report-to none --no-progress"  # fmt: skip
TRAIN = f"--dataset {{dataset}} --output-dir {{run}} --max-steps 4 --stop-at-step 2 --eval-steps 2 " \
        f"--checkpointing-steps 2 {TINY}"  # fmt: skip
DEFAULT_ARGS = {
    "prepare": "--source tmdb --data-dir {raw} --output {dataset} --quiet",
    "train": f"{TRAIN} --no-text",
    "evaluate": "--model {model} --dataset {dataset} --output {results} --metrics-backend numpy --no-progress",
    "recommend": "--model {model} --dataset {dataset}",
    "export": "--model {model} --dataset {dataset} --output {export} --chunk-size 8 --no-progress",
}
LEFTOVER = re.compile(r"\.(tmp|old|del)-\d+-[0-9a-f]+$|\.partial$|^\.write-check-")


# ----- the inputs every case starts from -----


@dataclass(frozen=True)
class Base:
    raw: Path  # Kaggle-schema CSVs from the synthetic generator
    dataset: Path  # prepared from raw
    other: Path  # another prepared dataset (other seed and size)
    model: Path  # tiny model of `dataset`, no text
    other_model: Path  # tiny model of `other`
    text_model: Path  # tiny model of `dataset` that reads text through the tiny T5 at `encoder`
    encoder: Path
    run: Path  # a training run on `dataset` stopped at step 2 of 4: checkpoints/step_2 and best/
    export: Path  # an export of `model` on `dataset`
    user: int  # a user id of `dataset`
    movie: int  # the movieId, tmdb id and timestamp of the first rating in raw (its movie has every metadata file)
    tmdb: int
    timestamp: int


def run_script(command: str, argv: list[str], *, file_size_limit: int | None = None):
    """The real script in a subprocess; with `file_size_limit` the kernel refuses writes past that many bytes."""
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, str(REPO_ROOT / SCRIPTS[command]), *argv], env=offline_env(), capture_output=True, text=True,
        preexec_fn=limit_file_size if file_size_limit else None, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    from tiny import save_tiny_model, save_tiny_t5

    from fusionrec.data.prepare import prepare

    root = tmp_path_factory.mktemp("base")
    generate_synthetic(root / "raw", 0, 24, 40, 10)
    prepare("tmdb", root / "dataset", root / "raw")
    prepare("synthetic", root / "other", synthetic_users=16, synthetic_movies=30, synthetic_ratings_per_user=8, seed=1)
    encoder = save_tiny_t5(root / "t5")
    text = dict(use_text=True, text_encoder_name_or_path=str(encoder), text_hidden_size=32, text_max_length=16,
                perceiver_num_latents=4, perceiver_depth=1, perceiver_num_heads=2, perceiver_head_dim=8)  # fmt: skip
    done = run_script("train", DEFAULT_ARGS["train"].format(dataset=root / "dataset", run=root / "run").split())
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "run" / "checkpoints" / "step_2").is_dir() and (root / "run" / "best").is_dir()
    model = save_tiny_model(root / "model", root / "dataset")
    exported = root / "export"
    assert export.main(["--model", str(model), "--dataset", str(root / "dataset"), "--output", str(exported),
                        "--chunk-size", "8", "--no-progress"]) == 0  # fmt: skip
    def rows(name: str) -> list[dict]:
        with open(root / "raw" / name, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    tmdb_of = {row["movieId"]: row["tmdbId"] for row in reversed(rows("links_small.csv"))}
    described = set.intersection(*({row["id"] for row in rows(name)} for name in ("movies_metadata.csv", "keywords.csv",
                                                                                 "credits.csv")))  # fmt: skip
    first = next(row for row in rows("ratings_small.csv") if tmdb_of.get(row["movieId"]) in described)
    tmdb = int(tmdb_of[first["movieId"]])
    return Base(
        raw=root / "raw", dataset=root / "dataset", other=root / "other", model=model,
        other_model=save_tiny_model(root / "other_model", root / "other"),
        text_model=save_tiny_model(root / "text_model", root / "dataset", **text), encoder=encoder, run=root / "run",
        export=exported, user=int(first["userId"]), movie=int(first["movieId"]), tmdb=tmdb,
        timestamp=int(first["timestamp"]),
    )  # fmt: skip


@dataclass
class Work:
    """A case's workspace: copies of the base inputs, made on first use, that the case may damage."""

    root: Path
    base: Base

    def _copy(self, name: str) -> Path:
        target = self.root / name
        if not target.exists():
            shutil.copytree(getattr(self.base, name), target)
        return target

    raw = cached_property(lambda self: self._copy("raw"))
    dataset = cached_property(lambda self: self._copy("dataset"))
    model = cached_property(lambda self: self._copy("model"))
    text_model = cached_property(lambda self: self._copy("text_model"))
    run = cached_property(lambda self: self._copy("run"))
    export = cached_property(lambda self: self._copy("export"))

    @cached_property
    def results(self) -> Path:
        path = self.root / "results.json"
        path.write_text('{"earlier": "report"}\n')
        return path

    def __getitem__(self, name: str):  # str.format_map looks placeholders up here
        if name in ("other", "other_model", "encoder", "user", "movie", "tmdb", "timestamp"):
            return getattr(self.base, name)
        if name in ("cache", "afile", "missing", "outside"):
            return self.root / name
        return getattr(self, name)


# ----- how the cases damage their inputs -----

Mutation = Callable[[Work], None]


def add_ratings(*lines: str) -> Mutation:
    """Append rows to the ratings file ({movie}, {timestamp}, {user} are filled in)."""
    def mutate(w: Work) -> None:
        with open(w.raw / "ratings_small.csv", "a", newline="") as handle:
            handle.write("".join(line.format_map(w) + "\n" for line in lines))
    return mutate


def ratings_bytes(change: Callable[[bytes], bytes]) -> Mutation:
    def mutate(w: Work) -> None:
        path = w.raw / "ratings_small.csv"
        path.write_bytes(change(path.read_bytes()))
    return mutate


def garbage_lines(count: int, seed: int = 0) -> bytes:
    """Lines of random bytes, none a field separator, quote or line break: each is one malformed row."""
    generator = random.Random(seed)
    drop = set(b',"\r\n')
    return b"".join(bytes(b for b in generator.randbytes(80) if b not in drop) + b"\n" for _ in range(count))


def mixed_line_endings(data: bytes) -> bytes:
    lines = data.split(b"\n")
    return b"".join(line + (b"\r\n", b"\n", b"\r")[i % 3] for i, line in enumerate(lines[:-1])) + lines[-1]


def edit_cell(file: str, column: str, value: str) -> Mutation:
    """Set `column` of the row about the first rating's movie (its tmdb id) in a raw metadata file."""
    def mutate(w: Work) -> None:
        path = w.raw / file
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        key = rows[0].index("id")
        row = next(r for r in rows[1:] if r[key] == str(w.base.tmdb))
        row[rows[0].index(column)] = value
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        path.write_text(out.getvalue(), encoding="utf-8")
    return mutate


def write(name: str, data: bytes | str | Callable[[Work], bytes]) -> Mutation:
    """Replace a workspace file ("raw/x.csv", "dataset/feature_spec.json", ...) with `data`."""
    def mutate(w: Work) -> None:
        folder, _, rest = name.partition("/")
        path = w[folder] / rest if rest else w[folder]
        content = data(w) if callable(data) else data
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return mutate


def truncate(name: str, keep: int = 100) -> Mutation:
    def mutate(w: Work) -> None:
        folder, _, rest = name.partition("/")
        path = w[folder] / rest
        path.write_bytes(path.read_bytes()[:keep])
    return mutate


def edit_json(name: str, **changes) -> Mutation:
    def mutate(w: Work) -> None:
        folder, _, rest = name.partition("/")
        path = w[folder] / rest
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return mutate


def remove(name: str) -> Mutation:
    def mutate(w: Work) -> None:
        folder, _, rest = name.partition("/")
        path = w[folder] / rest if rest else w[folder]
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return mutate


def other_spec(w: Work) -> None:
    shutil.copy(w.base.other / "feature_spec.json", w.dataset / "feature_spec.json")


def encoder_gone(w: Work) -> None:
    """A text model whose encoder folder is gone (moved away) and whose token states were never cached."""
    path = w.text_model / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "text_encoder_name_or_path": str(w.root / "missing")}))


def pickled_checkpoint(w: Work) -> None:
    """run/checkpoints/step_2 as accelerate's save_state wrote it before: the optimizer, scheduler, RNG and loop
    states pickled (here bytes that no unpickler takes, so a read would fail with another error)."""
    step = w.run / "checkpoints" / "step_2"
    for path in [*step.glob("optimizer.*"), *step.glob("random_states_*"), step / "scheduler.json"]:
        path.unlink()
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"):
        (step / name).write_bytes(b"\x80\x04not a pickle")


def touch_file(name: str) -> Mutation:
    return write(name, "not a folder\n")


def other_files(w: Work) -> None:
    (w.root / "outside").mkdir()
    (w.root / "outside" / "notes.txt").write_text("keep me\n")


def both(*mutations: Mutation) -> Mutation:
    def mutate(w: Work) -> None:
        for mutation in mutations:
            mutation(w)
    return mutate


def guard_os(monkeypatch, folder: Path, number: int, names: tuple[str, ...]) -> None:
    """Make these os calls raise OSError(number) for paths inside `folder` (os.open only when it would create or
    write): what a read-only folder (EACCES) or a full disk (ENOSPC) does to every Python writer."""
    folder = folder.resolve()

    def inside(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and Path(os.fsdecode(path)).resolve().is_relative_to(folder)

    for name in names:
        real = getattr(os, name)

        def guarded(*args, _real=real, _name=name, **kwargs):
            writes = _name != "open" or args[1] & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)
            if writes and any(inside(a) for a in args[:2]):
                raise OSError(number, os.strerror(number), os.fsdecode(args[0]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, guarded)


READ_ONLY = ("open", "mkdir", "rename", "replace", "unlink", "rmdir")
DISK_FULL_AT_RENAME = ("rename", "replace")


# ----- the cases -----


@dataclass(frozen=True)
class Case:
    command: str
    name: str
    mutate: Mutation | None = None
    args: str = ""  # appended to the command's default options (argparse: a repeated option's last value wins) ...
    defaults: bool = True  # ... or, when False, the whole command line
    error: str | None = None  # exit 2 with this in the one-line error ...
    skipped: dict | None = None  # ... or exit 0 with these skip counts (prepare)
    same_tables: bool = False  # the prepared tables equal the clean input's (only skipped rows were added)
    script: bool = False  # run the real script in a subprocess
    file_size_limit: int | None = None
    os_error: tuple[int, tuple[str, ...]] | None = None  # (errno, os calls) failing inside the workspace

    def __str__(self) -> str:
        return f"{self.command}: {self.name}"


SCRIPT = {"script": True}
C = Case
CASES = [
    # prepare_dataset.py: malformed rows are skipped and counted, the rest of the data kept
    C("prepare", "random bytes appended to ratings", ratings_bytes(lambda d: d + garbage_lines(3)), skipped={"ratings/malformed_row": 3}, same_tables=True),
    C("prepare", "random bytes appended (script)", ratings_bytes(lambda d: d + garbage_lines(2, seed=7)), skipped={"ratings/malformed_row": 2}, same_tables=True, **SCRIPT),
    C("prepare", "user id beyond int64", add_ratings("99999999999999999999,{movie},4.0,{timestamp}"), skipped={"ratings/bad_user_id": 1}, same_tables=True),
    C("prepare", "movie id beyond int64", add_ratings("{user},9223372036854775808,4.0,{timestamp}"), skipped={"ratings/bad_movie_id": 1}, same_tables=True),
    C("prepare", "negative and fractional ids", add_ratings("-3,{movie},4.0,{timestamp}", "{user},1.5,4.0,{timestamp}"), skipped={"ratings/bad_user_id": 1, "ratings/bad_movie_id": 1}, same_tables=True),
    C("prepare", "NaN rating", add_ratings("{user},{movie},NaN,{timestamp}"), skipped={"ratings/bad_rating": 1}, same_tables=True),
    C("prepare", "inf rating", add_ratings("{user},{movie},inf,{timestamp}", "{user},{movie},-inf,{timestamp}"), skipped={"ratings/bad_rating": 2}, same_tables=True),
    C("prepare", "negative rating", add_ratings("{user},{movie},-4.0,{timestamp}"), skipped={"ratings/rating_out_of_range": 1}, same_tables=True),
    C("prepare", "text rating", add_ratings("{user},{movie},four stars,{timestamp}"), skipped={"ratings/bad_rating": 1}, same_tables=True),
    C("prepare", "NaN timestamp", add_ratings("{user},{movie},4.0,nan"), skipped={"ratings/bad_timestamp": 1}, same_tables=True),
    C("prepare", "inf timestamp", add_ratings("{user},{movie},4.0,inf"), skipped={"ratings/bad_timestamp": 1}, same_tables=True),
    C("prepare", "negative timestamp", add_ratings("{user},{movie},4.0,-1260759144"), skipped={"ratings/bad_timestamp": 1}, same_tables=True),
    C("prepare", "text timestamp", add_ratings("{user},{movie},4.0,yesterday"), skipped={"ratings/bad_timestamp": 1}, same_tables=True),
    C("prepare", "timestamp past year 9999", add_ratings("{user},{movie},4.0,99999999999999"), skipped={"ratings/timestamp_out_of_range": 1}, same_tables=True),
    C("prepare", "duplicated header row", add_ratings("userId,movieId,rating,timestamp"), skipped={"ratings/repeated_header": 1}, same_tables=True),
    C("prepare", "mixed line endings", ratings_bytes(mixed_line_endings), skipped={}, same_tables=True),
    C("prepare", "JSON genres (not a Python literal)", edit_cell("movies_metadata.csv", "genres", '[{"id": 18, "name": "Drama", "adult": false}]'), skipped={"movies_metadata/bad_genres": 1}),
    C("prepare", "code in a genres cell is not run", edit_cell("movies_metadata.csv", "genres", "__import__('os').mkdir('PWNED')"), skipped={"movies_metadata/bad_genres": 1}),
    C("prepare", "keywords cell not a literal", edit_cell("keywords.csv", "keywords", "[{'id': 1, 'name': heist}]"), skipped={"keywords/bad_list": 1}),
    C("prepare", "cast cell cut off", edit_cell("credits.csv", "cast", "[{'name': 'A Actor', 'order': 0"), skipped={"credits/bad_cast": 1}),
    C("prepare", "tmdb id beyond int64 in links", write("raw/links_small.csv", lambda w: (w.raw / "links_small.csv").read_text().replace(f",{w.base.tmdb}\n", ",99999999999999999999\n", 1)), skipped={"links/bad_tmdb_id": 1}),
    C("prepare", "metadata row with too few fields", lambda w: open(w.raw / "movies_metadata.csv", "a").write("False,oops,too,few\n"), skipped={"movies_metadata/malformed_row": 1}, same_tables=True),
    # prepare_dataset.py: files that cannot be used stop with one line
    C("prepare", "header-only ratings file", write("raw/ratings_small.csv", "userId,movieId,rating,timestamp\n"), error="ratings_small.csv has a header but no data rows"),
    C("prepare", "every rating bad", write("raw/ratings_small.csv", "userId,movieId,rating,timestamp\n1,2,x,3\n1,3,,4\n"), error="no valid ratings left in ratings_small.csv: all 2 rows skipped (bad_rating 2)"),
    C("prepare", "UTF-16 ratings file", ratings_bytes(lambda d: d.decode().encode("utf-16")), error="ratings_small.csv is UTF-16 text; save it as UTF-8"),
    C("prepare", "UTF-16 ratings file (script)", ratings_bytes(lambda d: d.decode().encode("utf-16")), error="ratings_small.csv is UTF-16 text", **SCRIPT),
    C("prepare", "gzip-compressed ratings file", ratings_bytes(lambda d: __import__("gzip").compress(d, mtime=0)), error="ratings_small.csv is gzip-compressed; decompress it"),
    C("prepare", "0-byte metadata file", write("raw/movies_metadata.csv", b""), error="movies_metadata.csv is empty: expected a header row"),
    C("prepare", "binary keywords file", write("raw/keywords.csv", b"id\x00keywords\x00\n\x01\x02"), error="keywords.csv is not a text CSV (NUL bytes"),
    C("prepare", "ratings without a rating column", write("raw/ratings_small.csv", "userId,movieId,stars,timestamp\n1,2,4,5\n"), error="lacks required column 'rating'"),
    C("prepare", "links file missing", remove("raw/links_small.csv"), error="links_small.csv: the ratings join metadata through links"),
    C("prepare", "output folder is a file", touch_file("afile"), args="--output {afile}", error="exists and is not a directory"),
    C("prepare", "output folder holds other files", other_files, args="--output {outside}", error="is not a prepared dataset (no feature_spec.json)"),
    C("prepare", "read-only output folder", os_error=(errno.EACCES, READ_ONLY), error="Permission denied; write to a folder you may write to"),
    C("prepare", "full disk (file-size limit)", file_size_limit=4096, error="File too large; free some disk space", **SCRIPT),
    # train_accelerate.py
    C("train", "dataset folder missing", args="--dataset {missing}", error="feature_spec.json: not found"),
    C("train", "feature_spec.json cut off", truncate("dataset/feature_spec.json"), error="feature_spec.json: not valid JSON"),
    C("train", "feature_spec.json without a field", write("dataset/feature_spec.json", '{"num_movies": 3}'), error="no 'num_users' field"),
    C("train", "feature spec from another dataset", other_spec, error="feature_spec.json belongs to another dataset"),
    C("train", "truncated sequences table", truncate("dataset/sequences/train-00000-of-00001.parquet"), error="sequences: cannot read the table"),
    C("train", "--init-from: truncated safetensors", truncate("model/model.safetensors"), args="--init-from {model}", error="cannot load the weights (Error while deserializing header"),
    C("train", "--init-from: config.json field of the wrong type", edit_json("model/config.json", hidden_size="32"), args="--init-from {model}", error="FusionRecConfig.hidden_size must be an int, got '32'"),
    C("train", "--init-from: a model of another dataset", args="--init-from {other_model}", error="feature spec differs"),
    C("train", "--text-encoder: missing folder", args=f"{TRAIN} --text-encoder {{missing}}", defaults=False, error="cannot load its config (no folder"),
    C("train", "output folder is a file", touch_file("afile"), args="--output-dir {afile}", error="exists and is not a folder"),
    C("train", "read-only output folder", os_error=(errno.EACCES, READ_ONLY), error="Permission denied"),
    C("train", "text cache folder is a file", touch_file("afile"), args=f"{TRAIN} --text-encoder {{encoder}} --text-cache-dir {{afile}}", defaults=False, error="Not a directory; a file is in the way"),
    C("train", "resume: damaged checkpoint (script)", truncate("run/checkpoints/step_2/model.safetensors"), args="--resume-from-checkpoint latest", error="the checkpoint is damaged", **SCRIPT),
    C("train", "resume: truncated optimizer state", truncate("run/checkpoints/step_2/optimizer.safetensors"), args="--resume-from-checkpoint latest", error="the checkpoint is damaged (Error while deserializing header"),
    C("train", "resume: RNG state cut off", truncate("run/checkpoints/step_2/random_states_0.json", 40), args="--resume-from-checkpoint latest", error="the checkpoint is damaged (Expecting"),
    C("train", "resume: scheduler state edited", write("run/checkpoints/step_2/scheduler.json", '{"last_epoch": 2}'), args="--resume-from-checkpoint latest", error="the checkpoint is damaged ('lr_lambdas')"),
    C("train", "resume: the old pickle-based checkpoint format", pickled_checkpoint, args="--resume-from-checkpoint latest", error="an accelerate save_state checkpoint, the old pickle-based format, which is not read"),
    C("train", "resume: no checkpoint", remove("run/checkpoints"), args="--resume-from-checkpoint latest", error="no step_N checkpoint"),
    C("train", "full disk (file-size limit)", args="--resume-from-checkpoint latest --stop-at-step 4 --dataset {base_dataset}", file_size_limit=2048, error="File too large; free some disk space", **SCRIPT),
    # evaluate_fusionrec.py
    C("evaluate", "truncated safetensors", truncate("model/model.safetensors"), error="cannot load the model (Error while deserializing header"),
    C("evaluate", "truncated safetensors (script)", truncate("model/model.safetensors"), error="cannot load the model", **SCRIPT),
    C("evaluate", "config.json field of the wrong type", edit_json("model/config.json", use_text="no"), error="FusionRecConfig.use_text must be true or false, got 'no'"),
    C("evaluate", "config.json not JSON", truncate("model/config.json", 20), error="is not a valid JSON file"),
    C("evaluate", "missing text-encoder folder", encoder_gone, args="--model {text_model} --cache-dir {cache}", error="cannot be loaded (no folder"),
    C("evaluate", "model of another dataset", args="--model {other_model}", error="feature spec differs"),
    C("evaluate", "feature spec from another dataset", other_spec, args="--model {other_model}", error="feature_spec.json belongs to another dataset"),
    C("evaluate", "truncated movies table", truncate("dataset/movies/train-00000-of-00001.parquet"), error="movies: cannot read the table"),
    C("evaluate", "--output is a folder", args="--output {dataset}", error="is a folder; give a file name"),
    C("evaluate", "--output inside a file", touch_file("afile"), args="--output {afile}/results.json", error="File exists; a file is in the way"),
    C("evaluate", "read-only output folder", os_error=(errno.EACCES, READ_ONLY), error="Permission denied"),
    C("evaluate", "disk full as the report is renamed into place", os_error=(errno.ENOSPC, DISK_FULL_AT_RENAME), error="No space left on device; free some disk space"),
    # recommend.py
    C("recommend", "truncated safetensors", truncate("model/model.safetensors"), args="--user-id {user}", error="cannot load the model"),
    C("recommend", "config.json field of the wrong type", edit_json("model/config.json", num_movies=40.0), args="--user-id {user}", error="FusionRecConfig.num_movies must be an int, got 40.0"),
    C("recommend", "config.json missing", remove("model/config.json"), args="--user-id {user}", error="no config.json there"),
    C("recommend", "missing text-encoder folder", encoder_gone, args="--model {text_model} --cache-dir {cache} --user-id {user}", error="cannot be loaded (no folder"),
    C("recommend", "model of another dataset", args="--model {other_model} --user-id {user}", error="feature spec differs"),
    C("recommend", "user id beyond int64", args="--user-id 99999999999999999999", error="unknown user id 99999999999999999999"),
    C("recommend", "rating that is not a number", args="--history #1=nan", error="--history: cannot read"),
    C("recommend", "truncated sequences table (script)", truncate("dataset/sequences/train-00000-of-00001.parquet"), args="--user-id {user}", error="sequences: cannot read the table", **SCRIPT),
    # export_embeddings.py
    C("export", "output folder is a file", touch_file("afile"), args="--output {afile}", error="exists and is not a folder"),
    C("export", "output folder holds other files", other_files, args="--output {outside}", error="holds other files"),
    C("export", "read-only output folder", os_error=(errno.EACCES, READ_ONLY), error="Permission denied"),
    C("export", "disk full as a file is renamed into place", os_error=(errno.ENOSPC, DISK_FULL_AT_RENAME), error="No space left on device"),
    C("export", "full disk (file-size limit)", args="--model {base_model} --dataset {base_dataset}", file_size_limit=1024, error="File too large; free some disk space", **SCRIPT),
    C("export", "truncated safetensors", truncate("model/model.safetensors"), error="cannot load the model"),
    C("export", "config.json field of the wrong type", edit_json("model/config.json", user_num_layers=[1]), error="FusionRecConfig.user_num_layers must be an int"),
    C("export", "missing text-encoder folder", encoder_gone, args="--model {text_model} --cache-dir {cache}", error="cannot be loaded (no folder"),
    C("export", "model of another dataset", args="--model {other_model}", error="feature spec differs"),
    C("export", "bad --as-of date", args="--as-of 2015-13-45", error="not a date"),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_the_corpus_covers_every_command_with_forty_cases_or_more():
    counts = {command: sum(case.command == command for case in CASES) for command in MAINS}
    assert sum(counts.values()) >= 40 and min(counts.values()) >= 5, counts
    assert len({str(case) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case: Case, base: Base, tmp_path: Path, monkeypatch, capsys):
    w = Work(tmp_path / "work", base)
    w.root.mkdir()
    if case.mutate is not None:
        case.mutate(w)
    template = f"{DEFAULT_ARGS[case.command]} {case.args}" if case.defaults else case.args
    fill = {"base_model": base.model, "base_dataset": base.dataset}
    argv = [part.format_map(_Lookup(w, fill)) for part in template.split()]
    before = snapshot(w.root)
    if case.script:
        done = run_script(case.command, argv, file_size_limit=case.file_size_limit)
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        if case.os_error:
            guard_os(monkeypatch, w.root, *case.os_error)
        code = MAINS[case.command](argv)
        monkeypatch.undo()
        out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-3000:]
    if case.error is not None:
        assert code == 2, (code, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error: " in lines[0] and case.error in lines[0], err[-3000:]
        assert snapshot(w.root) == before, "the workspace changed: something was left behind or overwritten"
        return
    assert code == 0, err[-3000:]
    leftovers = [str(p) for p in w.root.rglob("*") if LEFTOVER.search(p.name)]
    assert not leftovers and not Path("PWNED").exists()
    spec = json.loads((w.dataset / "feature_spec.json").read_text())
    baseline = json.loads((base.dataset / "feature_spec.json").read_text())
    added = {k: v - baseline["skipped"].get(k, 0) for k, v in spec["skipped"].items() if v != baseline["skipped"].get(k)}
    assert added == case.skipped, spec["skipped"]
    for reason in case.skipped:
        assert re.search(rf"^\s+{re.escape(reason)}\s+{spec['skipped'][reason]:,}$", out, re.MULTILINE), out
    if case.same_tables:
        for table in ("movies", "sequences"):
            name = f"{table}/train-00000-of-00001.parquet"
            assert (w.dataset / name).read_bytes() == (base.dataset / name).read_bytes(), table


class _Lookup(dict):
    """format_map source: the extra fields, then the workspace."""

    def __init__(self, work: Work, extra: dict) -> None:
        super().__init__(extra)
        self.work = work

    def __missing__(self, name: str):
        return self.work[name]
