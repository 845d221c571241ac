"""Reading the raw files column-wise with pyarrow: headers and required columns checked first, malformed rows and
bad values skipped and counted by reason ("<file>/<reason>"), never a traceback. Also the per-stage timer and
progress bar that `prepare()` and the sources share.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from fusionrec.data.parsing import as_text, parse_int_id
from fusionrec.errors import PrepareError

logger = logging.getLogger("prepare_dataset")  # the data modules log under the command they serve

DEFAULT_RATING_RANGE = (0.5, 5.0)


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time one step of `prepare()` into `timings` (the summary prints them) and log its start and end."""
    start = time.perf_counter()
    logger.info("%s ...", name)
    yield
    elapsed = time.perf_counter() - start
    timings[name] = timings.get(name, 0.0) + elapsed
    logger.info("%s done in %.2fs", name, elapsed)


def with_progress(items: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A progress bar over a per-movie loop when `enabled` (an interactive terminal), else the items unchanged."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, total=total, desc=desc, unit="movie", leave=False)


def read_header(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> list[str]:
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        line = handle.readline()
    if not line.strip():
        raise PrepareError(f"{path.name} is empty: expected a header row; re-download or re-export the file")
    return [name.strip().lstrip("\ufeff") for name in next(csv.reader([line], delimiter=delimiter))]


def require_columns(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise PrepareError(
            f"{path.name} lacks required column {missing[0]!r} (has: {', '.join(header)}); "
            f"use the original file with columns {', '.join(required)}"
        )


def require_file(directory: Path, name: str, hint: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise PrepareError(f"missing required file {path}: {hint}")
    return path


@dataclass
class RatingsColumns:
    """Kept ratings in source file order."""

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    rows_read: int


def _numeric_from_strings(column: pa.ChunkedArray) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)


def _int_valid(values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.integer):
        return values >= 0
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values == np.floor(values))


def read_ratings(
    path: Path,
    skipped: Counter,
    *,
    columns: Sequence[str] = ("userId", "movieId", "rating", "timestamp"),
    delimiter: str = ",",
    has_header: bool = True,
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE,
) -> RatingsColumns:
    """Read a ratings file column-wise. Malformed rows and bad values are skipped and counted in `skipped`
    under "ratings/<reason>"; rows_read counts every data row seen."""
    user_col, movie_col, rating_col, time_col = columns
    if has_header:
        require_columns(path, read_header(path, delimiter), columns)
        read_options = pacsv.ReadOptions(block_size=1 << 26)
    else:
        read_options = pacsv.ReadOptions(column_names=list(columns), block_size=1 << 26)
    malformed: list[int] = []

    def on_invalid(_row: Any) -> str:
        malformed.append(1)
        return "skip"

    parse_options = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    typed = {user_col: pa.int64(), movie_col: pa.int64(), rating_col: pa.float64(), time_col: pa.int64()}
    try:
        table = pacsv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(column_types=typed, include_columns=list(columns)),
        )
        as_strings = False
    except pa.ArrowInvalid:
        # Some cell is not a number: re-read as text and coerce, so bad cells become NaN and get counted.
        malformed.clear()
        table = pacsv.read_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(columns, pa.string()), include_columns=list(columns)
            ),
        )
        as_strings = True
    if malformed:
        skipped["ratings/malformed_row"] += len(malformed)
    rows = table.num_rows

    def numeric(name: str) -> np.ndarray:
        column = table.column(name)
        if as_strings:
            return _numeric_from_strings(column)
        if column.null_count:
            return column.to_numpy().astype(np.float64)  # nulls -> NaN
        return column.to_numpy()

    user, movie, rating, ts = [numeric(name) for name in columns]
    lo, hi = rating_range
    with np.errstate(invalid="ignore"):
        rating_numeric = np.isfinite(rating)
        reasons = [
            ("bad_user_id", ~_int_valid(user)),
            ("bad_movie_id", ~_int_valid(movie)),
            ("bad_rating", ~rating_numeric),
            ("rating_out_of_range", rating_numeric & ((rating < lo) | (rating > hi))),
            ("bad_timestamp", ~_int_valid(ts)),
        ]
    keep = np.ones(rows, dtype=bool)
    for reason, bad in reasons:
        hit = bad & keep
        count = int(hit.sum())
        if count:
            skipped[f"ratings/{reason}"] += count
            keep &= ~hit
    all_kept = bool(keep.all())

    def pick(values: np.ndarray, dtype: Any) -> np.ndarray:
        return (values if all_kept else values[keep]).astype(dtype, copy=False)

    return RatingsColumns(
        user=pick(user, np.int64),
        movie=pick(movie, np.int64),
        rating=pick(rating, np.float32),
        timestamp=pick(ts, np.int64),
        rows_read=rows + len(malformed),
    )


def read_text_table(
    path: Path,
    required: Sequence[str],
    skipped: Counter,
    name: str,
    *,
    delimiter: str = ",",
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> dict[str, list[str | None]]:
    """A small text CSV as {column: [str | None]}; quoted newlines allowed; malformed rows counted as
    "<name>/malformed_row"; undecodable bytes replaced."""
    if has_header:
        header = read_header(path, delimiter, encoding)
        require_columns(path, header, required)
        read_options = pacsv.ReadOptions(block_size=1 << 26)
    else:
        header = list(column_names or [])
        read_options = pacsv.ReadOptions(column_names=header, block_size=1 << 26)
    malformed: list[int] = []

    def on_invalid(_row: Any) -> str:
        malformed.append(1)
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=read_options,
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid, quote_char='"'
        ),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.binary())),
    )
    if malformed:
        skipped[f"{name}/malformed_row"] += len(malformed)
    out: dict[str, list[str | None]] = {}
    for column in header:
        raw = table.column(column).to_pylist()
        if encoding == "utf-8":
            out[column] = [as_text(v) for v in raw]
        else:
            out[column] = [
                None if v is None else (v.decode(encoding, errors="replace").strip() or None) for v in raw
            ]
    return out


def first_row_per_id(
    ids: Sequence[Any], skipped: Counter, name: str, wanted: set[int] | None = None
) -> dict[int, int]:
    """{id: first row} for valid ids; bad ids counted as "<name>/bad_id", repeats as "<name>/duplicate_id"."""
    first: dict[int, int] = {}
    seen: set[int] = set()
    for row, raw in enumerate(ids):
        parsed = parse_int_id(raw)
        if parsed is None:
            skipped[f"{name}/bad_id"] += 1
        elif parsed in seen:
            skipped[f"{name}/duplicate_id"] += 1
        else:
            seen.add(parsed)
            if wanted is None or parsed in wanted:
                first[parsed] = row
    return first
