"""Real time series for forecasting: built-in datasets (no network) and any CSV file.

    load_series("sunspots")                          -> [309, 1]   yearly sunspot numbers 1700-2008
    load_series("co2")                               -> [2284, 1]  weekly Mauna Loa CO2 1958-2001
    load_series("prices.csv", column="close")        -> [n, 1]
    load_series("prices.csv", column=["open", 3])    -> [n, 2]     names and 0-based indices mixed
    read_series(...)                                 -> SeriesData: values, column names, season

The built-in datasets are the ones statsmodels ships inside its wheel (an optional dependency:
`pip install 'seqlab[forecast]'`, imported only when one is asked for):

    name       points  step     default column   season   what
    sunspots   309     year     SUNACTIVITY      11       yearly mean sunspot number, 1700-2008
    co2        2284    week     co2              52       Mauna Loa atmospheric CO2 (ppm), 1958-2001
    nile       100     year     volume           -        annual Nile flow at Aswan, 1871-1970
    elnino     732     month    temperature      12       Pacific sea surface temperature, 1950-2010
    macrodata  203     quarter  realgdp          4        US macroeconomic series, 1959-2009

A name that is not built in is read as a CSV file (a built-in name shadows a file of the same
name in the working directory: write ./co2 for the file). A header row is detected when any of
its cells is not a number; without one, columns are named by their 0-based index. `column`
picks columns by name (exact, else case-insensitive) or 0-based index, one or several (a list,
or one string with commas: "open,close"); by default every column whose cells are all numbers
(or empty) is taken, so a date column is skipped.

Missing values (empty cells, "nan", "NA") are handled by `nan`: "interpolate" (the default)
drops leading and trailing rows with a missing value, then fills interior gaps linearly (co2
misses 59 of its weeks; interpolating keeps the weekly step that the season of 52 assumes);
"drop" removes the rows, which shifts the steps after each gap; "error" raises a DataError that
says how many are missing. Shapes: values [t, features], float64.
"""

from __future__ import annotations

import csv
import importlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqlab.errors import DataError

NAN_POLICIES = ("interpolate", "drop", "error")
MISSING = {"", "nan", "na", "n/a", "null", "none", "-"}


@dataclass(frozen=True)
class BuiltinSeries:
    module: str  # statsmodels.datasets.<module>
    default_columns: tuple[str, ...]
    season: int | None
    description: str


BUILTIN_SERIES: dict[str, BuiltinSeries] = {
    "sunspots": BuiltinSeries("sunspots", ("SUNACTIVITY",), 11, "yearly mean sunspot number, 1700-2008"),
    "co2": BuiltinSeries("co2", ("co2",), 52, "weekly Mauna Loa atmospheric CO2 (ppm), 1958-2001"),
    "nile": BuiltinSeries("nile", ("volume",), None, "annual Nile flow at Aswan, 1871-1970"),
    "elnino": BuiltinSeries("elnino", ("temperature",), 12, "monthly Pacific sea surface temperature"),
    "macrodata": BuiltinSeries("macrodata", ("realgdp",), 4, "quarterly US macroeconomic series"),
}


@dataclass
class SeriesData:
    values: np.ndarray  # [t, features] float64, no NaN
    columns: list[str]
    name: str
    season: int | None = None  # the period of the seasonal-naive forecast; None = no season known
    notes: list[str] = field(default_factory=list)  # what was done to the data (e.g. gaps filled)


def _import_statsmodels_dataset(name: str):
    try:
        return importlib.import_module(f"statsmodels.datasets.{BUILTIN_SERIES[name].module}")
    except ImportError as error:
        raise DataError(
            f"the built-in series {name!r} comes from the statsmodels package, which is not installed: "
            "run `pip install 'seqlab[forecast]'`, or pass a CSV file instead"
        ) from error


def _builtin_table(name: str) -> tuple[list[str], list[list[str | float]]]:
    """(column names, rows) of a statsmodels dataset; elnino's year x month table becomes one column."""
    frame = _import_statsmodels_dataset(name).load_pandas().data
    if name == "elnino":
        months = [c for c in frame.columns if c != "YEAR"]
        monthly = frame[months].to_numpy(dtype=np.float64).reshape(-1)  # row-major: Jan..Dec per year
        return ["temperature"], [[v] for v in monthly]
    return [str(c) for c in frame.columns], frame.to_numpy(dtype=np.float64).tolist()


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"CSV file {str(path)!r} is binary (a NUL byte at offset {nul}), not text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"CSV file {str(path)!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 CSV"
        ) from None
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"CSV file {str(path)!r} is empty; give it a header row and one value per line")
    first = rows[0]
    if all(_number(cell) is not None for cell in first):
        header = [str(i) for i in range(len(first))]
    else:
        header, rows = [cell.strip() for cell in first], rows[1:]
    return header, rows


def _number(cell) -> float | None:
    """The cell as a float (NaN for a missing-value marker), or None if it is not a number."""
    if isinstance(cell, float):
        return cell
    text = cell.strip()
    if text.lower() in MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _all_numeric(cells) -> bool:
    """Every cell a number or missing, and at least one a number: a default column."""
    numbers = [_number(cell) for cell in cells]
    return all(v is not None for v in numbers) and any(not math.isnan(v) for v in numbers)


def _resolve_columns(column, header: list[str], where: str) -> list[int]:
    if isinstance(column, str):
        column = [part.strip() for part in column.split(",") if part.strip()]
    elif isinstance(column, int):
        column = [column]
    if not column:
        raise DataError(f"no column given for {where}; its columns are: {', '.join(header)}")
    picked = []
    for c in column:
        if isinstance(c, str) and c in header:
            picked.append(header.index(c))
            continue
        folded = [i for i, h in enumerate(header) if isinstance(c, str) and h.lower() == c.lower()]
        if len(folded) == 1:
            picked.append(folded[0])
            continue
        index = c if isinstance(c, int) else (int(c) if isinstance(c, str) and c.isdigit() else None)
        if index is not None and 0 <= index < len(header):
            picked.append(index)
            continue
        raise DataError(
            f"{where} has no column {c!r}; its columns are: {', '.join(header)} "
            f"(pick them by name or by 0-based index 0..{len(header) - 1})"
        )
    return picked


def _numeric_columns(header, rows, picked, where) -> np.ndarray:
    out = np.empty((len(rows), len(picked)), dtype=np.float64)
    for j, col in enumerate(picked):
        bad = []
        for i, row in enumerate(rows):
            value = _number(row[col]) if col < len(row) else math.nan
            if value is None:
                bad.append((i, row[col]))
                value = math.nan
            out[i, j] = value
        if bad:
            # Data rows are numbered from 1, after the header.
            (row, text), n = bad[0], len(bad)
            raise DataError(
                f"column {header[col]!r} of {where} has {n} non-numeric value{'s' * (n > 1)}, the first "
                f"{text!r} in data row {row + 1}; fix or remove those cells, or pick numeric columns with "
                "column=..."
            )
    return out


def _handle_missing(values: np.ndarray, header_picked: list[str], nan: str, where: str, notes: list[str]):
    missing = np.isnan(values)
    n = int(missing.sum())
    if n == 0:
        return values
    per_column = ", ".join(f"{h}: {int(k)}" for h, k in zip(header_picked, missing.sum(0)) if k)
    if nan == "error":
        raise DataError(
            f"{where} has {n} missing value{'s' * (n > 1)} ({per_column}); pass nan='interpolate' to fill "
            "gaps linearly or nan='drop' to remove those rows (--nan on the command line)"
        )
    if nan == "drop":
        notes.append(f"dropped {int(missing.any(1).sum())} rows with missing values ({per_column})")
        return values[~missing.any(1)]
    rows_ok = np.flatnonzero(~missing.any(1))
    if len(rows_ok) == 0:
        raise DataError(f"{where}: no row has every picked column filled ({per_column} missing)")
    values = values[rows_ok[0] : rows_ok[-1] + 1].copy()
    trimmed = len(missing) - len(values)
    filled = 0
    for j in range(values.shape[1]):
        gaps = np.isnan(values[:, j])
        if gaps.any():
            known = np.flatnonzero(~gaps)
            values[gaps, j] = np.interp(np.flatnonzero(gaps), known, values[known, j])
            filled += int(gaps.sum())
    notes.append(
        f"filled {filled} missing value{'s' * (filled != 1)} by linear interpolation"
        + (f" and dropped {trimmed} incomplete leading/trailing rows" if trimmed else "")
        + f" ({per_column})"
    )
    return values


def read_series(
    source: str | Path, column: str | int | list[str | int] | None = None, *, nan: str = "interpolate"
) -> SeriesData:
    """A series with its column names and season: a built-in name (BUILTIN_SERIES) or a CSV path."""
    if nan not in NAN_POLICIES:
        raise DataError(f"nan={nan!r} is not one of {NAN_POLICIES}")
    name = str(source)
    builtin = BUILTIN_SERIES.get(name.lower())
    if builtin is not None:
        header, rows = _builtin_table(name.lower())
        where, season = f"built-in series {name.lower()!r}", builtin.season
        picked = _resolve_columns(list(builtin.default_columns) if column is None else column, header, where)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(
                f"series {name!r} is neither a built-in dataset ({', '.join(BUILTIN_SERIES)}) nor an "
                "existing CSV file; check the path or pick a built-in name"
            )
        header, rows = _read_csv(path)
        where, season = f"CSV file {name!r}", None
        if column is None:
            cells = [[r[j] if j < len(r) else "" for r in rows] for j in range(len(header))]
            picked = [j for j, column_cells in enumerate(cells) if _all_numeric(column_cells)]
            if not picked:
                raise DataError(
                    f"{where} has no all-numeric column; its columns are: {', '.join(header)}; "
                    "fix the file or pick columns with column=..."
                )
        else:
            picked = _resolve_columns(column, header, where)
    columns = [header[j] for j in picked]
    notes: list[str] = []
    values = _handle_missing(_numeric_columns(header, rows, picked, where), columns, nan, where, notes)
    if len(values) < 2:
        raise DataError(
            f"{where} has {len(values)} usable row{'s' * (len(values) != 1)}; a series needs at least 2 "
            "(and forecasting needs many more: a context window plus validation and test parts)"
        )
    return SeriesData(values, columns, name.lower() if builtin else name, season, notes)


def load_series(
    source: str | Path, column: str | int | list[str | int] | None = None, *, nan: str = "interpolate"
) -> np.ndarray:
    """The series as a float64 array [t, features]; see read_series and the module docstring."""
    return read_series(source, column, nan=nan).values


__all__ = ["BUILTIN_SERIES", "NAN_POLICIES", "BuiltinSeries", "SeriesData", "load_series", "read_series"]
