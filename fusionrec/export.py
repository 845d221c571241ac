"""Export every movie's and every user's vector (float16) with ids and titles.

    python export_embeddings.py --model DIR_OR_ID --dataset DIR --output OUT \
        [--as-of 2010-01-01 2015-01-01 ...] [--format parquet csv] [--chunk-size 50000]

Writes into OUT:
  movies.parquet                 movie_index, movie_id, tmdb_id, imdb_id, title, year, cold_item, vector
  users.parquet                  (no --as-of, or --as-of last) each user as of their last rating
  users_as_of_YYYY-MM-DD.parquet (one per --as-of date) each user as of the end of that day (UTC)
  manifest.json                  model, dataset, hidden size, files, dates
User files hold user_index, user_id, as_of (the date, or "last"), as_of_timestamp (the query time, unix seconds),
num_ratings (ratings read), vector. A user with no ratings yet at a date keeps a row (num_ratings 0): the vector of
their user id alone. `vector` is a fixed-size list of float16; CSV files (--format csv) spread it over v0..v{d-1}.

OUT is built whole in a staging folder next to it, .OUT.partial/, and renamed into place when complete: OUT is
always the previous export or the new one, never half of one (an existing OUT must hold a previous export, i.e. a
manifest.json). Users are computed in chunks of --chunk-size, each saved as a part file in the staging folder; a
rerun after an interruption (Ctrl-C, a kill) skips the finished chunks (when the model, dataset, dates and chunk size
are unchanged). A run that stops with an error removes the staging folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fusionrec.cli import (
    add_precision_option,
    autocast,
    format_time,
    open_session,
    parse_date,
    resolve_device,
    run_command,
)
from fusionrec.errors import CommandError
from fusionrec.io import atomic_output, atomic_write_text, check_writable, remove_path
from fusionrec.parallel import check_processes, run_forked
from fusionrec.retrieval import dated_user_vectors

PARTS = ".parts"


def vector_array(vectors: torch.Tensor | np.ndarray) -> pa.FixedSizeListArray:
    values = np.asarray(vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float16()), values.shape[1])


def write_table(table: pa.Table, path: Path, fmt: str) -> Path:
    """Atomically write a table as parquet or CSV (vector -> v0..v{d-1} columns)."""
    with atomic_output(path) as temporary:
        if fmt == "parquet":
            pq.write_table(table, temporary)
        else:
            import pyarrow.csv as pacsv

            columns = {name: table[name] for name in table.column_names if name != "vector"}
            if "vector" in table.column_names:
                dim = table.schema.field("vector").type.list_size
                flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                matrix = flat.reshape(-1, dim) if dim else np.zeros((len(table), 0), np.float32)
                columns.update({f"v{i}": pa.array(matrix[:, i]) for i in range(dim)})
            pacsv.write_csv(pa.table(columns), temporary)
    return path


def movies_table(session, movie_vectors: torch.Tensor) -> pa.Table:
    movies = session.movies
    columns = {
        "movie_index": pa.array(movies["movie_index"].to_numpy(), pa.int32()),
        "movie_id": pa.array(movies["movie_id"], pa.int64(), from_pandas=True),
        "tmdb_id": pa.array(movies["tmdb_id"], pa.int64(), from_pandas=True),
        "imdb_id": pa.array(movies["imdb_id"], pa.string(), from_pandas=True),
        "title": pa.array(session.catalog.titles, pa.string()),
        "year": pa.array(session.catalog.years, pa.int32()),
        "cold_item": pa.array(session.catalog.cold_item.numpy()),
        "vector": vector_array(movie_vectors),
    }
    return pa.table(columns)


def compute_user_chunk(
    session, rows: range, movie_vectors: torch.Tensor, dates: Sequence[int | None], batch_size: int
) -> list[pa.Table]:
    """One chunk of the users table as of each date (None: each user's last rating), every history encoded once
    (`dated_user_vectors`)."""
    sequences = session.rows.sequences(slice(rows.start, rows.stop))
    nonempty = sequences.lengths() > 0
    last = np.where(nonempty, sequences.timestamps[np.maximum(sequences.stops - 1, 0)] if nonempty.any() else 0, 0)
    as_of = np.stack([last if t is None else np.full(len(sequences), t, dtype=np.int64) for t in dates], axis=1)
    vectors = dated_user_vectors(session.model, sequences, movie_vectors, as_of=as_of,
                                 batch_size=batch_size)  # fmt: skip
    tables = []
    for number, date in enumerate(dates):
        counts = sequences.until(as_of[:, number]).lengths()
        tables.append(pa.table({
            "user_index": pa.array(sequences.user_index, pa.int32()),
            "user_id": pa.array(session.user_ids[rows.start : rows.stop], pa.int64()),
            "as_of": pa.array(["last" if date is None else format_time(date)] * len(sequences), pa.string()),
            "as_of_timestamp": pa.array(as_of[:, number], pa.int64(), mask=~nonempty if date is None else None),
            "num_ratings": pa.array(counts, pa.int32()),
            "vector": vector_array(vectors[:, number]),
        }))  # fmt: skip
    return tables


def fingerprint(session, model_name: str, as_of: int | None, chunk_size: int, precision: str = "no") -> str:
    """What a part file depends on: the weights, the config, the dataset spec, the date, the chunking and the
    precision the vectors were computed in."""
    digest = hashlib.sha256()
    digest.update(json.dumps([model_name, as_of, chunk_size, len(session.rows), precision]).encode())
    digest.update(session.model.config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps(session.spec, sort_keys=True).encode())
    for name, tensor in sorted(session.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_users(
    session,
    output: Path,
    *,
    targets: Sequence[tuple[str, int | None, str]],
    movie_vectors: torch.Tensor,
    chunk_size: int,
    batch_size: int,
    formats: Sequence[str],
    processes: int = 1,
    show_progress: bool,
) -> list[Path]:
    """Users as of each (stem, date, fingerprint) target, chunk by chunk into resumable part files (all dates of a
    chunk at once, so each history is encoded once; `processes` forked CPU processes take every N-th chunk), then
    combined into the final file(s) per target."""
    folders = []
    for stem, _, key in targets:
        parts = output / PARTS / stem
        stamp = parts / "fingerprint.txt"
        if parts.exists() and (not stamp.is_file() or stamp.read_text() != key):
            shutil.rmtree(parts)  # parts of another model, dataset, date or chunking: start over
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, key)
        folders.append(parts)
    total = len(session.rows)
    chunks = [range(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]

    def export_chunk(number: int) -> int:
        paths = [parts / f"part-{number:05d}.parquet" for parts in folders]
        missing = [i for i, path in enumerate(paths) if not path.is_file()]
        if missing:
            tables = compute_user_chunk(session, chunks[number], movie_vectors, [targets[i][1] for i in missing], batch_size)
            for i, table in zip(missing, tables, strict=True):
                write_table(table, paths[i], "parquet")
        return len(chunks[number])

    run_forked(export_chunk, len(chunks), processes=processes, total=total, desc="users", unit="user",
               show_progress=show_progress)  # fmt: skip
    written = []
    for (stem, date, _), parts in zip(targets, folders, strict=True):
        tables = [pq.read_table(parts / f"part-{chunk:05d}.parquet") for chunk in range(len(chunks))]
        table = pa.concat_tables(tables) if tables else compute_user_chunk(session, range(0), movie_vectors, [date], batch_size)[0]
        written += [write_table(table, output / f"{stem}.{fmt}", fmt) for fmt in formats]
        shutil.rmtree(parts)
    return written


def check_output(output: Path) -> None:
    """OUT is replaced whole: it must be new, empty or a previous export, never a folder of other files."""
    if output.exists() and not output.is_dir():
        raise CommandError(f"--output {output} exists and is not a folder; choose another path.")
    if output.is_dir() and any(output.iterdir()) and not (output / "manifest.json").is_file():
        raise CommandError(
            f"--output {output} holds other files (no manifest.json of a previous export), and the export replaces "
            "the whole folder; choose a new or empty folder."
        )


def staging_folder(output: Path) -> Path:
    """Where an export is built (and resumed from) before it replaces OUT."""
    output = output.absolute()
    return output.with_name(f".{output.name}.partial")


def export(args, *, session=None) -> dict:
    output = Path(args.output)
    dates = [None if text == "last" else parse_date(text) for text in dict.fromkeys(args.as_of or ["last"])]
    if args.chunk_size <= 0 or args.batch_size <= 0:
        raise CommandError("--chunk-size and --batch-size must be positive integers.")
    check_processes(args.processes, resolve_device(args.device))
    check_output(output)
    check_writable(output.absolute().parent)
    if session is None:
        session = open_session(
            args.model, args.dataset, device=args.device, cache_dir=args.cache_dir,
            batch_size=args.batch_size, show_progress=not args.no_progress,
        )
    staging = staging_folder(output)
    for leftover in staging.iterdir() if staging.is_dir() else []:  # a resumed run keeps only the finished parts
        if leftover.name != PARTS:
            remove_path(leftover)
    with atomic_output(output, folder=True, temporary=staging, keep_on_interrupt=True) as folder:
        manifest = write_export(args, session, folder, dates)
    return manifest


def write_export(args, session, folder: Path, dates: list[int | None]) -> dict:
    """Every file of the export into `folder` (the staging folder); finished user parts are kept between runs."""
    with autocast(session.model, args.mixed_precision):
        movie_vectors = session.movie_vectors()
    formats = list(dict.fromkeys(args.format))
    files = [write_table(movies_table(session, movie_vectors), folder / f"movies.{fmt}", fmt) for fmt in formats]
    targets = [
        ("users" if t is None else f"users_as_of_{format_time(t)}", t,
         fingerprint(session, str(args.model), t, args.chunk_size, args.mixed_precision))
        for t in dates
    ]  # fmt: skip
    with autocast(session.model, args.mixed_precision):
        files += export_users(
            session, folder, targets=targets, movie_vectors=movie_vectors, chunk_size=args.chunk_size,
            batch_size=args.batch_size, formats=formats, processes=args.processes, show_progress=not args.no_progress,
        )  # fmt: skip
    shutil.rmtree(folder / PARTS, ignore_errors=True)
    manifest = {
        "model": str(args.model),
        "dataset": str(args.dataset),
        "hidden_size": int(movie_vectors.shape[1]),
        "dtype": "float16",
        "num_movies": len(session.catalog),
        "num_users": len(session.rows),
        "as_of": ["last rating" if t is None else format_time(t) for t in dates],
        "files": sorted(path.name for path in files),
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="folder written by save_pretrained, or a Hub id")
    parser.add_argument("--dataset", required=True, help="prepared dataset folder the model was trained on")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--as-of", nargs="+", metavar="DATE", help="YYYY-MM-DD dates, users as of the end of each (UTC); 'last': as of "
        "each user's last rating (the default)",
    )
    parser.add_argument("--format", nargs="+", choices=("parquet", "csv"), default=["parquet"])
    parser.add_argument("--chunk-size", type=int, default=50_000, help="users per resumable part file")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="CPU processes that compute user chunks in parallel, sharing the model and data (fork), one thread "
        "each: on CPU, one per core is fastest",
    )  # fmt: skip
    add_precision_option(parser)
    parser.add_argument("--cache-dir", help="text-cache root (default ~/.cache/fusionrec/text)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        manifest = export(args)
        print(
            f"wrote {args.output}: {manifest['num_movies']:,} movies and {manifest['num_users']:,} users "
            f"x {len(manifest['as_of'])} date(s), {manifest['hidden_size']}-dim float16: {', '.join(manifest['files'])}"
        )
        return 0

    return run_command(body)
