"""Plain CSV files users write (fleet inventories, availability traces), read so that
every mistake is one error naming the file, the line and the column.

A file is a header line, then one row per line; blank lines and lines starting with
``#`` (notes, e.g. where a trace comes from) are skipped but counted, so line numbers
are those an editor shows. Cells are stripped; a blank cell is a missing value.
"""

from __future__ import annotations

import csv
import difflib
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class TableError(ValueError):
    """A CSV file users wrote is unusable; the message names file, line and column."""


@dataclass(frozen=True)
class Table:
    """A parsed CSV file: its path, column positions (1-based) and rows."""

    path: str
    columns: dict[str, int]  # name -> column number as an editor counts
    rows: list[tuple[int, dict[str, str]]]  # (line, non-blank cells by column name)

    def where(self, line: int, column: str | None = None) -> str:
        """``"PATH line 7, column 3 (memory)"``: where a problem is."""
        if column is None or column not in self.columns:
            return f"{self.path} line {line}"
        return f"{self.path} line {line}, column {self.columns[column]} ({column})"

    def error(self, line: int, column: str | None, what: str) -> TableError:
        return TableError(f"{self.where(line, column)}: {what}")

    def number(
        self,
        line: int,
        cells: dict[str, str],
        column: str,
        low: float | None = None,
        high: float | None = None,
        above: bool = False,
    ) -> float | None:
        """A cell as a finite number within [low, high] (``above``: > low); None if blank."""
        text = cells.get(column)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.error(line, column, f"{text!r} is not a number") from None
        bad = not math.isfinite(value)
        bad |= low is not None and (value <= low if above else value < low)
        bad |= high is not None and value > high
        if bad:
            sign = ">" if above else ">="
            limits = [
                f"{sign} {low:g}" if low is not None else "",
                f"<= {high:g}" if high is not None else "",
            ]
            allowed = " and ".join(x for x in limits if x) or "finite"
            raise self.error(line, column, f"{text!r} is out of range; allowed: {allowed}")
        return value


def read_table(path: str, known: Sequence[str], required: Sequence[str] = ()) -> Table:
    """Read ``path``: a header naming some of ``known`` (all of ``required``), then rows
    with as many fields as the header. Raises :class:`TableError`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TableError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise TableError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise TableError(f"{path}: empty; expected a header line naming {', '.join(known)}")
    try:
        parsed = list(csv.reader([line for _, line in lines], strict=True))
    except csv.Error as e:
        raise TableError(f"{path}: not CSV ({e})") from None
    header_line, header = lines[0][0], [h.strip() for h in parsed[0]]
    columns = _columns(path, header_line, header, known, required)
    rows = []
    for (n, _), fields in zip(lines[1:], parsed[1:], strict=True):
        if len(fields) != len(header):
            raise TableError(
                f"{path} line {n}: {len(fields)} fields, but the header has {len(header)}"
            )
        cells = {h: v.strip() for h, v in zip(header, fields, strict=True) if v.strip()}
        rows.append((n, cells))
    if not rows:
        raise TableError(f"{path}: a header but no rows")
    return Table(path, columns, rows)


def _columns(
    path: str, line: int, header: list[str], known: Sequence[str], required: Sequence[str]
) -> dict[str, int]:
    """Column positions by name; unknown, repeated or missing names are errors."""
    columns: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        where = f"{path} line {line}, column {i}"
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TableError(f"{where}: unknown column {name!r}; {hint}allowed: {', '.join(known)}")
        if name in columns:
            raise TableError(f"{where}: column {name!r} repeated (first: column {columns[name]})")
        columns[name] = i
    for name in required:
        if name not in columns:
            raise TableError(
                f"{path} line {line}: no column {name!r}; required: {', '.join(required)}"
            )
    return columns


def cached_by_stat(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse(path)`` once per file version: the cache key holds the file's size and
    modification time, so an edited file is read again. (Validation and the run both
    need a file; reading it once keeps a 10,000-row inventory cheap.)"""

    @functools.lru_cache(maxsize=16)
    def cached(path: str, stamp: tuple[int, int]) -> T:
        return parse(path)

    def read(path: str) -> T:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):
            stamp = (0, -1)  # parse() says why the file cannot be read
        return cached(path, stamp)

    functools.update_wrapper(read, parse)
    return read
