"""Reading the raw files column-wise with pyarrow: headers and required columns checked first, malformed rows and
bad values skipped and counted by reason ("<file>/<reason>"), never a traceback. Also the per-stage timer and
progress bar that `prepare()` and the sources share.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fusionrec.data.parsing import as_text, parse_int_id
from fusionrec.errors import PrepareError, first_line

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


_NOT_UTF8 = (
    (b"\xff\xfe\x00\x00", "UTF-32 text; save it as UTF-8"),
    (b"\x00\x00\xfe\xff", "UTF-32 text; save it as UTF-8"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive; unzip it first"),
)


def read_header(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> list[str]:
    """The header row's column names; an empty, UTF-16, compressed or binary file stops with one line."""
    with open(path, "rb") as handle:
        line = handle.readline(1 << 16)
    for magic, what in _NOT_UTF8:
        if line.startswith(magic):
            raise PrepareError(f"{path.name} is {what}")
    if b"\x00" in line:
        raise PrepareError(f"{path.name} is not a text CSV (NUL bytes in its first line); use the original file")
    text = line.decode(encoding, errors="replace")
    if not text.strip():
        raise PrepareError(f"{path.name} is empty: expected a header row; re-download or re-export the file")
    return [name.strip().lstrip("\ufeff") for name in next(csv.reader([text], delimiter=delimiter))]


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


@contextmanager
def _undecodable_rows_noted(flag: list[bool]) -> Iterator[None]:
    """pyarrow decodes a malformed row as UTF-8 before it calls the skip handler, and reports a row it cannot decode
    to sys.unraisablehook (a traceback on stderr) instead: note it here, quietly; the caller reads again as Latin-1."""
    previous = sys.unraisablehook

    def hook(event: Any) -> None:
        if isinstance(event.exc_value, UnicodeDecodeError):
            flag.append(True)
        else:
            previous(event)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def read_csv(
    path: Path, *, delimiter: str, column_types: dict, column_names: Sequence[str] | None = None,
    newlines_in_values: bool = False,
) -> tuple[pa.Table, int, bool]:
    """pyarrow's read_csv (only `column_types`' columns) with malformed rows (wrong number of fields) skipped;
    returns the table, the number of rows skipped and whether it was read as Latin-1: a file with a malformed row
    of undecodable bytes is read again that way, where every byte decodes (text cells then map back to their bytes
    with `original_bytes`). A file that is no CSV at all stops with one line."""
    malformed: list[int] = []
    undecodable: list[bool] = []

    def on_invalid(_row: Any) -> str:
        malformed.append(1)
        return "skip"

    for latin1 in (False, True):
        malformed.clear()
        try:
            with _undecodable_rows_noted(undecodable):
                table = pacsv.read_csv(
                    path,
                    read_options=pacsv.ReadOptions(
                        column_names=list(column_names) if column_names else None, block_size=1 << 26,
                        encoding="latin-1" if latin1 else "utf8",
                    ),
                    parse_options=pacsv.ParseOptions(
                        delimiter=delimiter, quote_char='"', newlines_in_values=newlines_in_values,
                        invalid_row_handler=on_invalid,
                    ),
                    convert_options=pacsv.ConvertOptions(column_types=column_types, include_columns=list(column_types)),
                )  # fmt: skip
        except pa.ArrowInvalid as error:
            if undecodable and not latin1:
                continue
            raise PrepareError(f"{path.name} cannot be read as CSV ({first_line(error)[:160]}); check the file") from None
        return table, len(malformed), latin1
    raise AssertionError("unreachable")


def original_bytes(cell: bytes | None) -> bytes | None:
    """A text cell read as Latin-1 back to the bytes the file holds."""
    return None if cell is None else cell.decode("utf-8").encode("latin-1")


@dataclass
class RatingsColumns:
    """Kept ratings in source file order."""

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    rows_read: int


_INT_TEXT = r"^\s*\+?0*(\d{1,19})(?:\.0*)?\s*$"
_FLOAT_TEXT = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"
_INT64_MAX = str(np.iinfo(np.int64).max).encode()
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a date can show


def _matches(column: pa.ChunkedArray, pattern: str) -> pa.ChunkedArray:
    return pc.fill_null(pc.match_substring_regex(column, pattern), False)


def int_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and a mask of the valid ones: non-negative whole numbers ("862", "+862", "862.0") that fit
    int64, exactly (no float round trip, so an id beyond int64 is invalid, not wrapped)."""
    if pa.types.is_integer(column.type):
        valid = pc.fill_null(pc.greater_equal(column, 0), False)
        return pc.fill_null(column, 0).to_numpy(), valid.to_numpy()
    digits = pc.replace_substring_regex(column, _INT_TEXT, r"\1")
    valid = pc.and_(_matches(column, _INT_TEXT), pc.invert(pc.and_(
        pc.equal(pc.binary_length(digits), len(_INT64_MAX)), pc.greater(digits, pa.scalar(_INT64_MAX, digits.type))
    )))  # fmt: skip
    valid = pc.fill_null(valid, False)
    safe = pc.if_else(valid, digits, pa.scalar(b"0", digits.type))
    return pc.cast(pc.cast(safe, pa.string()), pa.int64()).to_numpy(), valid.to_numpy()


def float_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a mask of the finite ones (text such as "nan", "inf", "4 stars" is invalid)."""
    if not pa.types.is_floating(column.type):
        number = _matches(column, _FLOAT_TEXT)
        text = pc.utf8_trim_whitespace(pc.cast(pc.if_else(number, column, pa.scalar(b"0", column.type)), pa.string()))
        column = pc.if_else(number, pc.cast(text, pa.float64()), None)
    values = pc.fill_null(column, np.nan).to_numpy()
    return values, np.isfinite(values)


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
    under "ratings/<reason>"; rows_read counts every data row seen. A clean file is parsed straight into numbers;
    one with a bad cell is read as bytes and every cell checked, so nothing is kept by accident (an id beyond
    int64, a timestamp past year 9999)."""
    user_col, movie_col, rating_col, time_col = columns
    if has_header:
        require_columns(path, read_header(path, delimiter), columns)
    names = None if has_header else columns
    typed = {user_col: pa.int64(), movie_col: pa.int64(), rating_col: pa.float64(), time_col: pa.int64()}
    try:
        table, malformed, _ = read_csv(path, delimiter=delimiter, column_types=typed, column_names=names)
    except PrepareError:
        # Some cell is not a number (or not text at all): read bytes, so bad cells are counted, never guessed.
        text = dict.fromkeys(columns, pa.binary())
        table, malformed, _ = read_csv(path, delimiter=delimiter, column_types=text, column_names=names)
    if malformed:
        skipped["ratings/malformed_row"] += malformed
    rows = table.num_rows
    user, user_ok = int_column(table.column(user_col))
    movie, movie_ok = int_column(table.column(movie_col))
    rating, rating_ok = float_column(table.column(rating_col))
    ts, ts_ok = int_column(table.column(time_col))
    repeated_header = np.zeros(rows, dtype=bool)
    if has_header and pa.types.is_binary(table.column(user_col).type):
        repeated_header = np.logical_and.reduce(
            [pc.fill_null(pc.equal(table.column(name), name.encode()), False).to_numpy() for name in columns]
        )
    lo, hi = rating_range
    reasons = [
        ("repeated_header", repeated_header),
        ("bad_user_id", ~user_ok),
        ("bad_movie_id", ~movie_ok),
        ("bad_rating", ~rating_ok),
        ("rating_out_of_range", rating_ok & ((rating < lo) | (rating > hi))),
        ("bad_timestamp", ~ts_ok),
        ("timestamp_out_of_range", ts_ok & (ts > MAX_TIMESTAMP)),
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
        rows_read=rows + malformed,
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
    else:
        header = list(column_names or [])
    table, malformed, latin1 = read_csv(
        path, delimiter=delimiter, column_types=dict.fromkeys(header, pa.binary()),
        column_names=None if has_header else header, newlines_in_values=True,
    )  # fmt: skip
    if malformed:
        skipped[f"{name}/malformed_row"] += malformed
    out: dict[str, list[str | None]] = {}
    for column in header:
        raw = table.column(column).to_pylist()
        if latin1:
            raw = [original_bytes(v) for v in raw]
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
