"""Pure parsers for the cells of the raw movie files: ids, numbers, dates, titles and Kaggle's stringified lists.

Each takes one cell (str, bytes, number, None or NaN) and returns a clean value or None/NaN; none of them raises
on bad input. Stringified lists are read with `ast.literal_eval`, never eval.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CREW_JOBS = (
    "Director",
    "Screenplay",
    "Writer",
    "Producer",
    "Original Music Composer",
    "Director of Photography",
)

_INT_RE = re.compile(r"^\+?\d+(?:\.0*)?$")
_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")
_ML_TITLE_RE = re.compile(r"^(.*?)\s*\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_IMDB_RE = re.compile(r"^tt\d+$")
WHITESPACE = re.compile(r"\s+")


def as_text(value: Any) -> str | None:
    """bytes/str/None/NaN -> stripped str or None (empty is None)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    elif isinstance(value, float):
        if math.isnan(value):
            return None
        value = repr(value)
    else:
        value = str(value)
    value = value.strip()
    return value or None


def parse_stringified_list(value: Any) -> list[dict] | None:
    """Parse a Kaggle cell like "[{'id': 16, 'name': 'Animation'}]" safely with ast.literal_eval.

    Empty / missing -> []. A single dict is wrapped in a list. Returns None when the text is broken
    (the caller counts it and treats the field as empty). Non-dict elements are dropped.
    """
    text = as_text(value)
    if text is None or text.lower() in ("nan", "none", "[]", "{}"):
        return []
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, (list, tuple)):
        return None
    return [item for item in obj if isinstance(item, dict)]


def names_of(items: Iterable[dict], key: str = "name") -> list[str]:
    """Non-empty, whitespace-normalised `key` values in order, duplicates removed (first kept)."""
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        name = as_text(item.get(key))
        if name is None:
            continue
        name = WHITESPACE.sub(" ", name)
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def cast_names(cast: Iterable[dict]) -> list[str]:
    """Cast names in billing order (`order` ascending, file order for ties/missing)."""
    items = list(cast)

    def billing(pair: tuple[int, dict]) -> tuple[float, int]:
        pos, item = pair
        order = parse_float(item.get("order"))
        return (order if math.isfinite(order) else math.inf, pos)

    return names_of(item for _, item in sorted(enumerate(items), key=billing))


def crew_tokens(crew: Iterable[dict], jobs: Sequence[str] = CREW_JOBS) -> list[str]:
    """ "Job:Name" tokens for the given jobs, ordered by job priority then file order, duplicates removed."""
    rank = {job: i for i, job in enumerate(jobs)}
    picked = []
    for pos, item in enumerate(crew):
        job = as_text(item.get("job"))
        name = as_text(item.get("name"))
        if job in rank and name:
            picked.append((rank[job], pos, f"{job}:{WHITESPACE.sub(' ', name)}"))
    picked.sort()
    out: list[str] = []
    seen: set[str] = set()
    for _, _, token in picked:
        if token not in seen:
            seen.add(token)
            out.append(token)
    return out


INT64_MAX = 2**63 - 1


def parse_int_id(value: Any) -> int | None:
    """A non-negative integer id that fits int64 from "862", "862.0", 862 or 862.0; None for "1997-08-20", "",
    "abc", NaN, -1 or 99999999999999999999."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not (math.isfinite(value) and float(value).is_integer()):
            return None
        number = int(value)
    else:
        text = as_text(value)
        if text is None or not _INT_RE.match(text):
            return None
        number = int(text.split(".", 1)[0].lstrip("+"))
    return number if 0 <= number <= INT64_MAX else None


def parse_float(value: Any) -> float:
    """A finite float or NaN (missing, text, inf)."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        out = float(value)
    else:
        text = as_text(value)
        if text is None:
            return math.nan
        try:
            out = float(text)
        except ValueError:
            return math.nan
    return out if math.isfinite(out) else math.nan


def log1p_positive(value: float) -> float:
    """log1p(x) for x > 0, NaN otherwise (zero budget/revenue means unknown)."""
    return math.log1p(value) if value > 0 else math.nan


def log1p_nonnegative(value: float) -> float:
    """log1p(x) for x >= 0, NaN otherwise (counts, popularity)."""
    return math.log1p(value) if value >= 0 else math.nan


def parse_year(value: Any) -> int | None:
    """Year from "1995-10-30", "1995" or a MovieLens "01-Jan-1995"; None when unknown or implausible."""
    text = as_text(value)
    if text is None:
        return None
    match = _DATE_RE.match(text)
    if match:
        year = int(match.group(1))
    else:
        tail = re.search(r"(\d{4})$", text)
        if not tail:
            return None
        year = int(tail.group(1))
    return year if 1850 <= year <= 2100 else None


def year_bucket(year: int | None) -> str | None:
    """Decade label: 1995 -> "1990s"."""
    return None if year is None else f"{year // 10 * 10}s"


def parse_movielens_title(text: Any) -> tuple[str, int | None]:
    """ "Toy Story (1995)" -> ("Toy Story", 1995); a title without a year keeps its text."""
    title = as_text(text) or ""
    match = _ML_TITLE_RE.match(title)
    if match and match.group(1):
        return match.group(1).strip(), int(match.group(2))
    return title, None


def format_imdb_id(value: Any) -> str | None:
    """ "tt0114709" or a links.csv number 114709 / "0114709" -> "tt0114709"."""
    text = as_text(value)
    if text is None:
        return None
    if _IMDB_RE.match(text):
        return text
    number = parse_int_id(text)
    return None if number is None else f"tt{number:07d}"
