"""Read archived recordings (WFDB, Parquet, CSV) into one in-memory `Recording`.

Channel names are mapped onto canonical names so callers can ask for "II" (lead II ECG) and
"PLETH" (PPG) whatever the archive calls them (BIDMC writes "II," and "PLETH,", MIT-BIH "MLII", monitors "Lead II").
Table exports put units in the names ("PLETH [au]", BIDMC's CSV "Time [s]") or, PhysioNet's CSV, in a row under
them; both are read as units, and a time column is found by its name and unit (`time_s`, `time_ms`, "Time [s]").

NaN handling: invalid WFDB samples (and empty Parquet/CSV cells) are kept as NaN. Callers must
handle them (e.g. `stream.tools.replay` splits the chunk stream at NaN runs).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["Recording", "MissingChannel", "read_recording", "canonical_name", "clean_name", "split_unit", "TIME_COLUMN"]

# Alias (upper-case, trailing punctuation, a unit in brackets and the separators " ", "_", "-" removed) -> canonical
# name: "ECG II", "ECG_II", "ECG-II" and "Lead II" are all lead II.
_ALIASES = {
    "II": "II",
    "ECG": "II",
    "ECGII": "II",
    "LEADII": "II",
    "ECGLEADII": "II",
    "MLII": "II",
    "PLETH": "PLETH",
    "PPG": "PLETH",
    "SPO2WAVE": "PLETH",
    "ABP": "ABP",
    "ART": "ABP",  # MIMIC's name for the arterial line
    "IBP": "ABP",
}
# Aliases that give way to a channel of the canonical name itself: a record with both "ABP" and "ART" (two arterial
# lines) reads them as "ABP" and "ART" instead of being refused as ambiguous.
_YIELDING = {"ART", "IBP"}
# A trailing unit in brackets or parentheses, as table exports write it: "PLETH [au]", "II (mV)", "Time [s]".
_UNIT_SUFFIX = re.compile(r"^(.*?\S)\s*[\[(]([^\[\]()]*)[\])]$")
# Time columns: the names (unit split off, lower case) and what their unit says a value is, in seconds.
_TIME_NAMES = ("time", "elapsed time", "elapsed_time", "timestamp", "t")
_ISO_DATETIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d")  # how a date-time written as text begins
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
               "milliseconds": 1e-3, "us": 1e-6, "µs": 1e-6, "microseconds": 1e-6, "ns": 1e-9, "nanoseconds": 1e-9}
# Relative deviation of sample intervals tolerated before `time_s` counts as non-uniform.
_UNIFORM_RTOL = 1e-3
TIME_COLUMN = "time_s"


class MissingChannel(ValueError):
    """A requested channel is not in the record (other read errors stay plain ValueError / OSError)."""


@dataclass
class Recording:
    """A recording in memory: named signals (each at its own rate) plus the patient's demographics."""

    name: str
    signals: dict[str, np.ndarray]  # float32, canonical names
    rates: dict[str, float]  # Hz per signal
    units: dict[str, str]
    age: float | None = None
    sex: str | None = None  # "M" / "F" / None
    # canonical name -> the name as written in the file (trailing punctuation/whitespace stripped)
    original_names: dict[str, str] = field(default_factory=dict)
    # time of the first sample on the input's own clock, s: a table's time column's first value (seconds since the
    # Unix epoch for datetimes); 0 without one. Outputs written for the user keep this clock, so they join the input.
    start_s: float = 0.0

    def duration_s(self, signal: str) -> float:
        """Length of `signal` in seconds."""
        return len(self.signals[signal]) / self.rates[signal]


def clean_name(raw: str) -> str:
    """File channel name without quotes around it and trailing punctuation/whitespace ("II, " and "'II'" -> "II";
    PhysioNet's CSV export quotes every name).

    Parameters
    ----------
    raw : the name as written in the file.
    """
    return re.sub(r"[\s,;:.]+$", "", str(raw).strip().strip("'\"")).strip()


def split_unit(raw: str) -> tuple[str, str]:
    """(cleaned name, unit) of a column name that carries its unit in brackets or parentheses ("PLETH [au]" ->
    ("PLETH", "au"), "II (mV)" -> ("II", "mV")); (cleaned name, "") for one that does not.

    Parameters
    ----------
    raw : the channel or column name.
    """
    name = clean_name(raw)
    m = _UNIT_SUFFIX.match(name)
    return (clean_name(m.group(1)), m.group(2).strip()) if m else (name, "")


def canonical_name(raw: str) -> str:
    """Canonical signal name for a channel/column name, case-insensitive, with a unit in brackets dropped ("ECG",
    "Lead II", "ECG-II" and "MLII" -> "II", "PPG" and "PLETH [au]" -> "PLETH", "ART" -> "ABP"); an unknown name comes back cleaned,
    without its unit, and upper-cased.

    Parameters
    ----------
    raw : the channel or column name.
    """
    upper, key = _alias_key(raw)
    return _ALIASES.get(key, upper)


def _alias_key(raw: str) -> tuple[str, str]:
    """(name without its unit, upper-cased; the same without separators: what `_ALIASES` is keyed by)."""
    upper = split_unit(raw)[0].upper()
    return upper, re.sub(r"[\s_-]+", "", upper)


def read_recording(
    path: str | Path,
    signals: Sequence[str] | None = None,
    *,
    rate_hz: float | None = None,
) -> Recording:
    """Load a WFDB record (with or without `.hea`), a `.parquet` or a `.csv` file.

    Parameters
    ----------
    path : the record (WFDB: with or without `.hea`) or table file (CSV: `,`, `;` or tab between fields, a decimal
        comma with `;`, UTF-8 or Latin-1).
    signals : channels to keep, by (any alias of) their canonical name; None keeps all.
    rate_hz : sample rate (Hz) for tables without a `time_s` column or `rate_hz` metadata.

    Returns
    -------
    Recording with float32 signals under canonical names; invalid WFDB samples and empty cells are NaN.

    Raises
    ------
    MissingChannel : a requested channel is not in the record (the message names what it has).
    ValueError, OSError : the file is unreadable or inconsistent (e.g. non-uniform `time_s`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    wanted = None if signals is None else [canonical_name(s) for s in signals]
    if suffix in (".parquet", ".pq"):
        rec = _read_parquet(path, rate_hz)
    elif suffix == ".csv":
        rec = _read_csv(path, rate_hz)
    else:
        rec = _read_wfdb(path, wanted)
    return _select(rec, wanted)


# ---------------------------------------------------------------- WFDB


def _read_wfdb(path: Path, wanted: list[str] | None) -> Recording:
    import wfdb

    base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header_path = base.with_name(base.name + ".hea")
    if not header_path.exists():
        raise ValueError(f"no WFDB header {base}.hea (and not a .parquet/.csv file)")
    try:  # wfdb reads an empty header as IndexError: list index out of range
        blank = not any(ln.strip() and not ln.lstrip().startswith("#")
                        for ln in header_path.read_text(errors="replace").splitlines())
    except OSError as exc:
        raise ValueError(f"{header_path}: cannot read: {exc.strerror}") from None
    if blank:
        raise ValueError(f"{header_path}: empty WFDB header (no record line)")
    try:
        header = wfdb.rdheader(str(base), rd_segments=True)
        # a multi-segment record (MIMIC) names its channels in its layout segment (variable layout) or in every one
        sig_name = header.sig_name
        if sig_name is None:
            layout = header.segments[0] if header.layout == "variable" else next(s for s in header.segments if s)
            sig_name = layout.sig_name
    except Exception as exc:  # wfdb raises many types for a malformed record
        raise ValueError(f"{base}: cannot read WFDB record: {type(exc).__name__}: {exc}") from None
    # A header's frequency of 0 (or garbage wfdb reads as a number) would give every channel a rate of 0 Hz: callers
    # divide by it (alarm-check ended in ZeroDivisionError) or carry it on as a rate.
    try:
        fs = float(header.fs)
    except (TypeError, ValueError):
        fs = math.nan
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"{header_path}: invalid sampling frequency {header.fs!r} Hz in the record line")
    names = [clean_name(n) for n in sig_name]
    canon = _canonical_names(names)
    _check_duplicates(base.name, canon, names)
    if wanted is None:
        idx = list(range(len(names)))
    else:
        _require(base.name, wanted, canon)
        idx = [canon.index(w) for w in wanted]
    try:
        # smooth_frames=False: a channel stored at several samples per frame keeps them all (its own rate) instead
        # of being averaged down to the frame rate. Segments are merged (a missing one reads as NaN).
        rec = wfdb.rdrecord(str(base), channels=idx, physical=True, smooth_frames=False)
    except Exception as exc:
        raise ValueError(f"{base}: cannot read WFDB record: {type(exc).__name__}: {exc}") from None
    units = rec.units or [""] * len(idx)  # wfdb gives None when segments disagree on a channel's units
    fs = float(rec.fs)
    age, sex = _age_sex_from_comments(header.comments or [])
    out = Recording(name=base.name, signals={}, rates={}, units={}, age=age, sex=sex)
    for col, i in enumerate(idx):
        c = canon[i]
        # NaN where the stored sample is the WFDB "invalid" value
        out.signals[c] = np.ascontiguousarray(rec.e_p_signal[col], dtype=np.float32)
        out.rates[c] = fs * int(rec.samps_per_frame[col])
        out.units[c] = (units[col] or "").strip()
        out.original_names[c] = names[i]
    return out


_BIDMC_AGE = re.compile(r"<age>:\s*([^\s<]+)", re.I)
_BIDMC_SEX = re.compile(r"<sex>:\s*([^\s<]+)", re.I)
_MIT_AGE_SEX = re.compile(r"^\s*(\d+(?:\.\d+)?|\?)\s+([MF?])\b", re.I)


def _age_sex_from_comments(comments: Sequence[str]) -> tuple[float | None, str | None]:
    """Parse BIDMC `<age>: 88 <sex>: M` or MIT-BIH `69 M 1085 ...` comment styles."""
    for line in comments:
        m_age, m_sex = _BIDMC_AGE.search(line), _BIDMC_SEX.search(line)
        if m_age or m_sex:
            return (_parse_age(m_age.group(1)) if m_age else None, _parse_sex(m_sex.group(1)) if m_sex else None)
        m = _MIT_AGE_SEX.match(line)
        if m:
            return _parse_age(m.group(1)), _parse_sex(m.group(2))
    return None, None


def _parse_age(text) -> float | None:
    if text is None:
        return None
    s = str(text).strip().rstrip("+")  # BIDMC writes "90+" for de-identified ages
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _parse_sex(text) -> str | None:
    if text is None:
        return None
    s = str(text).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(s)


# ---------------------------------------------------------------- tables


def _read_parquet(path: Path, rate_hz: float | None) -> Recording:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()
            if not k.startswith(b"ARROW:") and k != b"pandas"}
    df = table.to_pandas()
    if any(n is not None for n in df.index.names):
        # a frame written by pandas with its time as the index (`df.set_index("time_s").to_parquet()`) comes back
        # with `time_s` as the index, not as a column: it was not found, and the rate called unknown
        df = df.reset_index()
    if rate_hz is None and "rate_hz" in meta:
        rate_hz = _parse_rate(path.stem, meta["rate_hz"])
    return _from_frame(path.stem, df, rate_hz, _parse_age(meta.get("age")), _parse_sex(meta.get("sex")),
                       _parse_units(meta.get("units")))


def _parse_rate(name: str, text: str) -> float:
    """The `rate_hz` metadata of a Parquet file in Hz ("125", "125 Hz"); ValueError naming it otherwise."""
    m = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*(?:hz)?\s*", text, re.I)
    try:
        return float(m.group(1)) if m else float(text)
    except ValueError:
        raise ValueError(f"{name}: 'rate_hz' metadata {text[:40]!r} is not a rate in Hz") from None


def _parse_units(text: str | None) -> dict:
    """The `units` metadata of a Parquet file (a JSON object, channel -> unit, as this package writes it). Units only
    label the samples: another writer's units ("mV", a JSON list) are left out rather than refusing the file (they
    made it unreadable: a JSONDecodeError, or an AttributeError and exit 1)."""
    try:
        units = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): "" if v is None else str(v) for k, v in units.items()} if isinstance(units, dict) else {}


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")


def _read_csv(path: Path, rate_hz: float | None) -> Recording:
    import pandas as pd

    sep, decimal = _csv_dialect(path)
    try:
        df = pd.read_csv(path, sep=sep, decimal=decimal, encoding="utf-8-sig")
    except UnicodeDecodeError:  # a spreadsheet's export in the machine's code page ("II [µV]" in Latin-1/cp1252)
        df = pd.read_csv(path, sep=sep, decimal=decimal, encoding="latin-1")
    df, units = _units_row(df)
    return _from_frame(path.stem, df, rate_hz, None, None, units)


_NA_MARKERS = frozenset({"", "-", "--", "?", "na", "n/a", "nan", "null", "none"})


def _units_row(df):
    """(frame, units by column) of a CSV whose first row under the names gives the units, as PhysioNet's export
    writes (`'Elapsed time','II','PLETH'` then `'seconds','mV','NU'`): that row is text in every column, and every
    column is numbers below it. Other frames come back as they are, with no units."""
    import pandas as pd

    if len(df) < 2 or not all(pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c])
                              for c in df.columns):
        return df, {}
    first = [str(v).strip().strip("'\"") if isinstance(v, str) else None for v in df.iloc[0]]
    if any(v is None or v.lower() in _NA_MARKERS or not pd.isna(pd.to_numeric(v, errors="coerce")) for v in first):
        return df, {}
    rest = df.iloc[1:].reset_index(drop=True)
    if not all(_numeric_column(rest[c]) is not None for c in rest.columns):
        return df, {}  # a text column (notes, labels) below: the first row is data, not units
    return rest, {clean_name(c): u for c, u in zip(df.columns, first)}


def _csv_dialect(path: Path) -> tuple[str, str]:
    """(separator, decimal mark) of a CSV file, from its first lines.

    Spreadsheets in many locales write `;` between fields and `,` as the decimal mark (and some export tabs): read
    with `,` such a file was one column named "time_s;PLETH;II", reported as having no time column, or no signal.
    """
    with open(path, "rb") as f:
        head = f.read(64 * 1024).decode("latin-1").splitlines()
    lines = [ln for ln in head if ln.strip()][:6]
    if not lines:
        return ",", "."
    header = re.sub(r'"[^"]*"', "", lines[0])  # a quoted name may hold any of them
    counts = {c: header.count(c) for c in (",", ";", "\t")}
    sep = max(counts, key=lambda c: (counts[c], c == ","))  # a tie (none at all: one column) stays ","
    if counts[sep] == 0:
        sep = ","
    decimal = "."
    if sep != "," and any(_DECIMAL_COMMA.match(v) for ln in lines[1:] for v in ln.split(sep)):
        decimal = ","
    return sep, decimal


def _from_frame(name, df, rate_hz, age, sex, units) -> Recording:
    if len(df) == 0:  # otherwise "no numeric signal columns (columns: PLETH, II)", or a rate it cannot infer
        raise ValueError(f"{name}: no samples: the table has no rows (columns: {', '.join(map(str, df.columns))})")
    cols = {clean_name(c): c for c in df.columns}
    times = {k: _time_scale(k, units.get(k, ""), df[cols[k]]) for k in cols}
    times = {k: v for k, v in times.items() if v is not None}
    if not times and rate_hz is None:  # nothing else says when: a time-named column of date-time text may
        df = _parse_datetime_text(name, df, cols)
        times = {k: v for k, v in ((k, _time_scale(k, units.get(k, ""), df[cols[k]])) for k in cols) if v is not None}
    time_key = min(times, key=lambda k: k.lower() != TIME_COLUMN, default=None)  # time_s first
    start_s = 0.0
    if time_key is not None:
        secs, origin_s = _seconds(df[cols[time_key]])
        inferred = _rate_from_time(name, secs * times[time_key], time_key)
        if rate_hz is not None and not math.isclose(inferred, rate_hz, rel_tol=_UNIFORM_RTOL):
            raise ValueError(f"{name}: {time_key} implies {inferred:g} Hz but a rate of {rate_hz:g} Hz was given")
        rate_hz = inferred
        start_s = origin_s + float(secs[0]) * times[time_key]
    if rate_hz is None:
        vague = [k for k in cols if split_unit(k)[0].lower() in _TIME_NAMES]
        hint = f" (column {vague[0]!r} has no unit: name it '{TIME_COLUMN}', 'time_ms' or 'time [s]')" if vague else ""
        raise ValueError(f"{name}: sampling rate unknown: add a '{TIME_COLUMN}' column or 'rate_hz' metadata, or give "
                         f"the rate (translate --input-rate, replay --rate-hz){hint}")
    rate_hz = float(rate_hz)
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"{name}: invalid sampling rate {rate_hz!r}")
    out = Recording(name=name, signals={}, rates={}, units={}, age=age, sex=sex, start_s=start_s)
    numeric = {k: _numeric_column(df[cols[k]]) for k in cols if k not in times}
    names = [k for k, v in numeric.items() if v is not None]
    canon = _canonical_names(names)
    _check_duplicates(name, canon, names)
    for k, c in zip(names, canon):
        out.signals[c] = numeric[k]
        out.rates[c] = rate_hz
        out.units[c] = str(units.get(k, units.get(c, "")) or split_unit(k)[1])
        out.original_names[c] = k
    if not out.signals:
        raise ValueError(f"{name}: no numeric signal columns (columns: {', '.join(map(str, df.columns))})")
    return out


def _time_scale(key: str, unit: str, col) -> float | None:
    """Seconds per value of a time column, or None for a column that is not one: `time_s` (also `time_ms`, `time_us`,
    `time_ns`), a time name with its unit in brackets or a units row ("Time [s]", BIDMC's CSV; "'Elapsed time'" over
    "'seconds'", PhysioNet's), or datetimes under a time name. A time name without a unit is not guessed at: read as
    seconds, a column of milliseconds at 1 kHz would pass as a 1 Hz recording."""
    import pandas as pd

    base, bracket = split_unit(key)
    low = base.lower()
    m = re.fullmatch(r"time_(s|ms|us|ns)", low)
    if m:
        return _TIME_UNITS[m.group(1)]
    if low in _TIME_NAMES:
        if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
            return 1.0
        return _TIME_UNITS.get((bracket or unit).strip().lower())
    return None


def _parse_datetime_text(name: str, df, cols: dict):
    """`df` with each time-named text column that reads as ISO date-times (a CSV's "2023-11-14 22:13:20.008")
    turned into datetimes, which the time column's reader takes as they come from Parquet."""
    import pandas as pd

    for key, col in cols.items():
        if split_unit(key)[0].lower() not in _TIME_NAMES or not pd.api.types.is_string_dtype(df[col]):
            continue
        head = df[col].dropna().astype(str).head(3)
        if not len(head) or not all(_ISO_DATETIME.match(v.strip()) for v in head):
            continue
        parsed = pd.to_datetime(df[col], format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            raise ValueError(f"{name}: column {key!r}: data row {bad[0] + 1} holds {str(df[col].iloc[bad[0]])[:40]!r}, "
                             "not an ISO date-time like the rows before it")
        df = df.assign(**{col: parsed.dt.tz_localize(None)})
    return df


def _seconds(col) -> tuple[np.ndarray, float]:
    """(float64 times, origin in s) of a time column, a time being origin + value: numbers as they are (origin 0);
    datetimes (Parquet timestamps) and durations from their first value, since read as numbers they are
    nanoseconds and the rate came out a billion times too low (origin: that first value, since the Unix epoch for
    datetimes)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        t = col.to_numpy(dtype="datetime64[ns]" if pd.api.types.is_datetime64_any_dtype(col) else "timedelta64[ns]")
        if not len(t):
            return np.zeros(0), 0.0
        # difference in integer ns first: as float64, ns since 1970 keep only about 0.25 us
        known = np.flatnonzero(~np.isnat(t))
        first = int(t[known[0] if len(known) else 0].astype(np.int64))
        s = (t.astype(np.int64) - first).astype(np.float64) / 1e9
        s[np.isnat(t)] = np.nan  # missing times: refused as not finite
        return s, first / 1e9
    if not pd.api.types.is_numeric_dtype(col):
        numbers = pd.to_numeric(col, errors="coerce")  # under a units row pandas reads every column as text
        bad = np.flatnonzero(numbers.isna().to_numpy() & col.notna().to_numpy()
                             & (col.astype(str).str.strip() != "").to_numpy())
        if len(bad):
            value = str(col.iloc[bad[0]])
            hint = (": name a column of date-times 'time' or 'timestamp'"
                    if _ISO_DATETIME.match(value.strip()) else "")
            raise ValueError(f"time column {col.name!r}: data row {bad[0] + 1} holds {value[:40]!r}, not a "
                             f"number{hint}")
        col = numbers
    return col.to_numpy(dtype=np.float64), 0.0


def _numeric_column(col) -> np.ndarray | None:
    """float32 samples of a table column, or None for a column that is not a signal. A mostly numeric column
    with a few markers ("-", "NaN", "--") keeps its numbers and gets NaN there: pandas reads such a column as
    text, and skipping it would lose the signal (and then report it as a missing channel)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float32, na_value=np.nan)
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return None
    values = pd.to_numeric(col, errors="coerce")
    present = int(col.notna().sum())
    if present == 0 or int(values.notna().sum()) < 0.5 * present:
        return None  # text: notes, labels
    return values.to_numpy(dtype=np.float32, na_value=np.nan)


def _rate_from_time(name: str, t: np.ndarray, column: str = TIME_COLUMN) -> float:
    if len(t) < 2:
        raise ValueError(f"{name}: need at least 2 rows in '{column}' to infer the sampling rate")
    dt = np.diff(t)
    bad = np.flatnonzero(~(np.isfinite(dt) & (dt > 0)))
    if len(bad):
        i = int(bad[0])  # data rows are numbered from 1 below the header (and a units row, when there is one)
        raise ValueError(f"{name}: '{column}' must be finite and strictly increasing; data rows {i + 1} and {i + 2} "
                         f"read {t[i]:.9g} and {t[i + 1]:.9g} s ({len(bad)} such step(s))")
    # A least-squares line through all the times, so rounding in individual times averages out ...
    k = np.arange(len(t)) - (len(t) - 1) / 2.0
    slope = float(np.dot(k, t - t.mean()) / np.dot(k, k))
    rate = 1.0 / slope
    # Uniform means every time lies near its place on that line: steps of a time_s printed to a few decimals
    # (360 Hz to 3 decimals: 0.003, 0.003, 0.002, ...) differ from each other by far more than that.
    off = np.abs(t - (t.mean() + k * slope))
    worst = float(np.max(off))
    # ... and every step near one period: one missing row mid-record stays within half a period of the line
    step_err = np.abs(dt * rate - 1.0)
    if worst > 0.5 / rate or float(np.max(step_err)) >= 0.5:
        broken = np.flatnonzero(step_err >= 0.5)
        if len(broken):
            i = int(broken[0])
            where = (f"the first step off the grid is after data row {i + 1}, {t[i] - t[0]:.6g} s after the first "
                     f"row: {dt[i]:.6g} s ({len(broken)} such step(s))")
        else:  # every step near the usual one, yet the times wander off any one rate
            where = f"the steps drift from {dt[0]:.6g} s to {dt[-1]:.6g} s: the rate is not constant"
        raise ValueError(
            f"{name}: non-uniform sampling in '{column}' (usual step {float(np.median(dt)):.6g} s; {where}); "
            "resample to a uniform grid first, or keep missing samples as empty rows on the grid (a gap)"
        )
    # ... and snap what is left (time_s printed to a few decimals) to the mHz: 2000.0000001 Hz is 2000 Hz, and the
    # wire format's rate limit and exact-rate checks downstream would otherwise see a rate just off the real one.
    snapped = round(rate, 3)
    return snapped if abs(snapped - rate) <= 1e-5 * rate else rate


# ---------------------------------------------------------------- helpers


def _canonical_names(raw: list[str]) -> list[str]:
    """`canonical_name` of each channel name, except that a yielding alias (`_YIELDING`) keeps its own name in a
    record that also has a channel of the canonical name itself."""
    canon = [canonical_name(r) for r in raw]
    own = [_alias_key(r)[1] for r in raw]
    literal = {c for c, o in zip(canon, own) if c == o}
    return [o if o in _YIELDING and c in literal else c for c, o in zip(canon, own)]


def _check_duplicates(name: str, canon: list[str], raw: list[str]) -> None:
    seen: dict[str, str] = {}
    for c, r in zip(canon, raw):
        if c in seen:
            raise ValueError(f"{name}: channels {seen[c]!r} and {r!r} both map to {c}; rename one")
        seen[c] = r


def _require(name: str, wanted: list[str], have: list[str]) -> None:
    for w in wanted:
        if w not in have:
            raise MissingChannel(f"record {name} has no channel {w} (has: {', '.join(have)})")


def _select(rec: Recording, wanted: list[str] | None) -> Recording:
    if wanted is None:
        return rec
    _require(rec.name, wanted, list(rec.signals))
    return Recording(
        name=rec.name,
        signals={w: rec.signals[w] for w in wanted},
        rates={w: rec.rates[w] for w in wanted},
        units={w: rec.units[w] for w in wanted},
        age=rec.age,
        sex=rec.sex,
        original_names={w: rec.original_names[w] for w in wanted},
        start_s=rec.start_s,
    )
