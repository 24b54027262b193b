"""operators.io.records: WFDB (BIDMC, MIT-BIH), Parquet and CSV into one `Recording`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.io.records import Recording, canonical_name, read_recording


@pytest.mark.parametrize("raw,canon", [("II", "II"), ("II, ", "II"), ("ii,", "II"), ("ECG", "II"), ("ecg_ii", "II"),
                                       ("ECGII", "II"), ("MLII", "II"), ("PLETH,", "PLETH"), ("ppg", "PLETH"),
                                       ("PLETH_", "PLETH"), ("SpO2 wave", "PLETH"), ("resp,", "RESP"), ("V5", "V5"),
                                       # lead II as monitors and exports spell it; units in brackets; quoted names
                                       ("Lead II", "II"), ("ECG-II", "II"), ("ECG Lead II", "II"), ("II [mV]", "II"),
                                       ("PLETH (au)", "PLETH"), ("'PLETH'", "PLETH"), ("RESP [Ohm]", "RESP"),
                                       ("ART", "ABP"), ("ABP [mmHg]", "ABP"), ("IBP", "ABP")])
def test_canonical_names(raw, canon):
    assert canonical_name(raw) == canon


def test_bidmc_channels_by_name_age_sex(bidmc_record):
    import wfdb

    path = bidmc_record(1)
    rec = read_recording(path, ["PLETH", "II"])
    assert isinstance(rec, Recording) and rec.name == "bidmc01"
    assert list(rec.signals) == ["PLETH", "II"]
    assert rec.rates == {"PLETH": 125.0, "II": 125.0}
    assert rec.units == {"PLETH": "NU", "II": "mV"}
    assert (rec.age, rec.sex) == (88.0, "M")
    assert rec.original_names == {"PLETH": "PLETH", "II": "II"}
    # Selection is by name, not column position: compare with wfdb's own read of the "II," column.
    raw = wfdb.rdrecord(str(path))
    col = [n.strip().rstrip(",") for n in raw.sig_name].index("II")
    for name in ("II", "PLETH"):
        assert rec.signals[name].dtype == np.float32 and rec.signals[name].shape == (60001,)
    np.testing.assert_allclose(rec.signals["II"], raw.p_signal[:, col], rtol=1e-6)
    # Column order differs between BIDMC records; by-name selection must still find lead II.
    other = read_recording(bidmc_record(2), ["II"])
    assert other.signals["II"].shape == (60001,)


def test_bidmc_header_with_plus_and_nan_age(bidmc_record):
    # bidmc18 has "<age>: NaN <sex>: ?" ; some have "90+".
    rec = read_recording(bidmc_record(18), ["II"])
    assert (rec.age, rec.sex) == (None, None)


def test_bidmc_path_with_hea_suffix(bidmc_record):
    path = bidmc_record(3)
    a = read_recording(str(path) + ".hea", ["II"])
    b = read_recording(path, ["II"])
    np.testing.assert_array_equal(a.signals["II"], b.signals["II"])


def test_mitdb_mlii_is_lead_ii(mitdb_record):
    rec = read_recording(mitdb_record)
    assert list(rec.signals) == ["II", "V5"]
    assert rec.rates["II"] == 360.0
    assert rec.original_names["II"] == "MLII"
    assert (rec.age, rec.sex) == (69.0, "M")  # "# 69 M 1085 1629 x1"


def test_missing_channel_error_names_what_exists(bidmc_record):
    with pytest.raises(ValueError) as err:
        read_recording(bidmc_record(1), ["II", "ABP"])
    assert str(err.value) == "record bidmc01 has no channel ABP (has: RESP, PLETH, V, AVR, II)"


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ValueError, match="no WFDB header"):
        read_recording(tmp_path / "nope")


def _frame(n=500, rate=125.0):
    t = np.arange(n) / rate
    return pd.DataFrame({"time_s": t, "ECG": np.sin(t).astype(np.float32), "PPG": np.cos(t).astype(np.float32),
                         "note": ["x"] * n})


def test_csv_round_trip_with_time_s(tmp_path):
    df = _frame()
    df.loc[7, "PPG"] = np.nan
    path = tmp_path / "rec.csv"
    df.to_csv(path, index=False)
    rec = read_recording(path)
    assert rec.name == "rec" and set(rec.signals) == {"II", "PLETH"}  # "note" is not numeric
    assert rec.rates == {"II": pytest.approx(125.0), "PLETH": pytest.approx(125.0)}
    assert rec.original_names == {"II": "ECG", "PLETH": "PPG"}
    np.testing.assert_allclose(rec.signals["II"], df["ECG"], rtol=1e-6)
    assert np.isnan(rec.signals["PLETH"][7])  # NaN stays NaN
    assert (rec.age, rec.sex) == (None, None)


def test_parquet_round_trip_with_metadata(tmp_path):
    df = _frame(rate=250.0).drop(columns=["time_s", "note"])
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"rate_hz": b"250", b"age": b"61", b"sex": b"F",
            b"units": json.dumps({"ECG": "mV"}).encode()}
    path = tmp_path / "rec.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    rec = read_recording(path, ["II"])
    assert list(rec.signals) == ["II"] and rec.rates["II"] == 250.0
    assert (rec.age, rec.sex, rec.units["II"]) == (61.0, "F", "mV")
    np.testing.assert_array_equal(rec.signals["II"], df["ECG"].to_numpy(np.float32))


@pytest.mark.parametrize("rate,decimals", [(2000.0, 4), (360.0, 6), (62.5, 6), (360.0, 3), (128.0, 4), (256.0, 5)])
def test_rate_from_rounded_time_s_is_the_exact_rate(tmp_path, rate, decimals):
    """time_s written with a few decimals still gives the exact rate (2000.0000001 Hz broke the wire's 2000 Hz cap),
    and is uniform: 360 Hz to 3 decimals steps 0.003, 0.003, 0.002, ..., which a per-step check called non-uniform."""
    n = int(rate * 30)
    path = tmp_path / "r.csv"
    pd.DataFrame({"time_s": np.round(np.arange(n) / rate, decimals), "PPG": np.zeros(n)}).to_csv(path, index=False)
    assert read_recording(path).rates["PLETH"] == rate


def test_parquet_time_s_infers_rate(tmp_path):
    path = tmp_path / "t.parquet"
    _frame(rate=62.5).drop(columns=["note"]).to_parquet(path)
    assert read_recording(path).rates["PLETH"] == pytest.approx(62.5)


def test_table_rate_from_argument_and_errors(tmp_path):
    df = _frame().drop(columns=["time_s"])
    path = tmp_path / "norate.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="sampling rate unknown"):
        read_recording(path)
    assert read_recording(path, rate_hz=100).rates["II"] == 100.0
    with pytest.raises(ValueError, match="has no channel RESP"):
        read_recording(path, ["RESP"], rate_hz=100)


def test_non_uniform_time_is_rejected(tmp_path):
    df = _frame()
    df.loc[100:, "time_s"] += 0.5  # a half-second jump
    path = tmp_path / "jumpy.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"usual step 0.008 s; the first step off the grid is after data row 100, "
                                         r"0.792 s after the first row: 0.508 s \(1 such step"):
        read_recording(path)
    df = _frame()
    df.loc[41, "time_s"] = df.loc[40, "time_s"]  # a repeated time: the rows a user has to look at are named
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"strictly increasing; data rows 41 and 42 read "):
        read_recording(path)


def test_time_s_conflicting_with_rate_argument(tmp_path):
    path = tmp_path / "c.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(ValueError, match="time_s implies 125 Hz"):
        read_recording(path, rate_hz=250)


def test_duplicate_canonical_names_are_rejected(tmp_path):
    path = tmp_path / "dup.csv"
    pd.DataFrame({"ECG": [1.0, 2.0], "II": [3.0, 4.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="both map to II"):
        read_recording(path, rate_hz=10)


def test_wfdb_multi_segment_record_is_read_whole(tmp_path):
    """MIMIC-style records are split into segments under a master header; the reader crashed on them."""
    import wfdb

    t = np.arange(1000) / 125.0
    for k, seg in enumerate(("ms_0001", "ms_0002")):
        wfdb.wrsamp(seg, fs=125, units=["mV", "NU"], sig_name=["II", "PLETH"], fmt=["16", "16"], write_dir=str(tmp_path),
                    p_signal=np.column_stack([np.sin(t + k), np.cos(t + k)]))
    (tmp_path / "ms.hea").write_text("ms/2 2 125 2000\nms_0001 1000\nms_0002 1000\n")
    rec = read_recording(tmp_path / "ms", ["PLETH"])
    assert list(rec.signals) == ["PLETH"] and rec.rates["PLETH"] == 125.0 and rec.units["PLETH"] == "NU"
    np.testing.assert_allclose(rec.signals["PLETH"], np.concatenate([np.cos(t), np.cos(t + 1)]), atol=1e-3)
    # variable layout (MIMIC): a layout segment names the channels, segments order them their own way, "~" is a gap
    wfdb.wrsamp("vl_0003", fs=125, units=["NU", "mV"], sig_name=["PLETH", "II"], fmt=["16", "16"], write_dir=str(tmp_path),
                p_signal=np.column_stack([np.cos(t) + 1, np.sin(t) + 1]))
    (tmp_path / "vl_layout.hea").write_text("vl_layout 2 125 0\nvl_layout.dat 16 200/mV 16 0 0 0 0 II\n"
                                            "vl_layout.dat 16 200/NU 16 0 0 0 0 PLETH\n")
    (tmp_path / "vl.hea").write_text("vl/4 2 125 2500\nvl_layout 0\nms_0001 1000\n~ 500\nvl_0003 1000\n")
    ii = read_recording(tmp_path / "vl", ["II"]).signals["II"]
    assert len(ii) == 2500 and np.all(np.isnan(ii[1000:1500]))
    np.testing.assert_allclose(ii[1500:], np.sin(t) + 1, atol=1e-2)


def test_wfdb_channel_with_several_samples_per_frame_keeps_its_rate(tmp_path):
    """A 500 Hz lead stored 4 samples per 125 Hz frame was averaged down to 125 Hz without a word."""
    import wfdb

    ecg = np.sin(np.arange(4000) / 5.0)
    ppg = np.cos(np.arange(1000) / 20.0)
    wfdb.wrsamp("spf", fs=125, units=["mV", "NU"], sig_name=["II", "PLETH"], e_p_signal=[ecg, ppg], samps_per_frame=[4, 1],
                fmt=["16", "16"], write_dir=str(tmp_path))
    rec = read_recording(tmp_path / "spf")
    assert (rec.rates["II"], rec.rates["PLETH"]) == (500.0, 125.0)
    assert (len(rec.signals["II"]), len(rec.signals["PLETH"])) == (4000, 1000)
    np.testing.assert_allclose(rec.signals["II"], ecg, atol=1e-3)


def test_table_column_with_a_few_text_markers_keeps_its_numbers(tmp_path):
    """pandas reads a column holding "-" as text; it was skipped, then reported as a missing channel."""
    path = tmp_path / "dash.csv"
    ii = [str(v) for v in np.sin(np.arange(100) / 5.0)]
    ii[10] = "-"
    pd.DataFrame({"II": ii, "PLETH": np.arange(100.0), "note": ["ok"] * 100}).to_csv(path, index=False)
    rec = read_recording(path, rate_hz=100)
    assert sorted(rec.signals) == ["II", "PLETH"]  # the text column is not a signal
    assert np.isnan(rec.signals["II"][10]) and np.count_nonzero(np.isnan(rec.signals["II"])) == 1


@pytest.mark.parametrize("where", [0.02, 0.5, 0.9])
def test_one_missing_row_in_time_s_is_non_uniform_wherever_it_is(tmp_path, where):
    """Mid-record, a dropped row keeps every time within half a period of the fitted line: it passed, as 124.8 Hz."""
    t = np.arange(1000) / 125.0
    t = np.delete(t, int(where * 1000))
    path = tmp_path / "gap.csv"
    pd.DataFrame({"time_s": t, "II": np.zeros(len(t))}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="non-uniform sampling"):
        read_recording(path)


def test_wfdb_header_with_a_zero_sampling_frequency_is_refused(tmp_path):
    """A record line with frequency 0 gave every channel a rate of 0 Hz: alarm-check divided by it
    (ZeroDivisionError, exit 1), the other tools carried it on as a rate."""
    import wfdb

    wfdb.wrsamp("fs0", fs=125, units=["mV"], sig_name=["II"], p_signal=np.zeros((500, 1)), fmt=["16"],
                write_dir=str(tmp_path))
    hea = tmp_path / "fs0.hea"
    hea.write_text(hea.read_text().replace("fs0 1 125 500", "fs0 1 0 500", 1))
    with pytest.raises(ValueError, match="invalid sampling frequency 0 Hz"):
        read_recording(tmp_path / "fs0")


def test_parquet_with_time_s_as_the_pandas_index(tmp_path):
    """`df.set_index("time_s").to_parquet()` stores time_s as the frame's index: it was not found, and the
    reader asked for a time_s column the file has."""
    df = _frame().drop(columns="note").set_index("time_s")
    df.to_parquet(tmp_path / "indexed.parquet")
    rec = read_recording(tmp_path / "indexed.parquet")
    assert sorted(rec.signals) == ["II", "PLETH"] and rec.rates["II"] == 125.0
    np.testing.assert_array_equal(rec.signals["II"], df["ECG"].to_numpy())


@pytest.mark.parametrize("kind", ["datetime", "datetime_tz", "timedelta"])
def test_parquet_time_s_as_timestamps_gives_the_rate_in_hz(tmp_path, kind):
    """A Parquet timestamp time_s was read as nanoseconds: 125 Hz came out as 1.25e-07 Hz."""
    t = pd.to_timedelta(np.arange(500) * 8, unit="ms")
    if kind != "timedelta":
        t = pd.Timestamp("2024-03-01 12:00", tz="Europe/Berlin" if kind == "datetime_tz" else None) + t
    pq.write_table(pa.table({"time_s": t, "PLETH": np.zeros(500, np.float32)}), tmp_path / "ts.parquet")
    assert read_recording(tmp_path / "ts.parquet").rates == {"PLETH": 125.0}


@pytest.mark.parametrize("dialect", ["semicolon", "semicolon_decimal_comma", "tab", "latin1"])
def test_csv_as_spreadsheets_export_it(tmp_path, dialect):
    """A CSV with `;` between fields (and `,` as decimal mark), or tabs, was read as one column named
    "time_s;II;PLETH" and refused as having no time column; a Latin-1 header ("µV") ended in UnicodeDecodeError."""
    df = _frame(n=200).drop(columns="note")
    path = tmp_path / f"{dialect}.csv"
    if dialect == "latin1":  # with a comma in a name, which must not decide the separator
        df.assign(**{"Temp, °C": 37.0, "note": "µV"}).to_csv(path, sep=";", index=False, encoding="latin-1")
    else:
        sep = "\t" if dialect == "tab" else ";"
        df.to_csv(path, sep=sep, decimal="," if dialect.endswith("comma") else ".", index=False)
    rec = read_recording(path)
    assert sorted(rec.signals) == ["II", "PLETH"] + (["TEMP, °C"] if dialect == "latin1" else [])
    assert rec.rates["II"] == 125.0
    np.testing.assert_allclose(rec.signals["II"], df["ECG"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(rec.signals["PLETH"], df["PPG"].to_numpy(), rtol=1e-6)


def test_csv_names_with_units_and_a_time_column_with_its_unit(tmp_path):
    """BIDMC's own CSV export names its columns "Time [s]", " PLETH", ...; other exports write "II [mV]" or
    "time_ms". The time column was not found ("sampling rate unknown") and "PLETH [au]" was no PLETH, with no way
    to name it: `--signal "PLETH [au]"` was refused as no signal the models know."""
    t = np.arange(500) / 125.0
    pd.DataFrame({"Time [s]": t, " PLETH": np.cos(t), "II [mV]": np.sin(t)}).to_csv(tmp_path / "bidmc.csv", index=False)
    rec = read_recording(tmp_path / "bidmc.csv", ["PLETH", "II"])
    assert rec.rates == {"PLETH": 125.0, "II": 125.0} and rec.units["II"] == "mV"
    assert rec.original_names["II"] == "II [mV]"
    np.testing.assert_allclose(rec.signals["II"], np.sin(t), rtol=1e-6)
    pd.DataFrame({"time_ms": t * 1000, "PLETH (au)": np.cos(t)}).to_csv(tmp_path / "ms.csv", index=False)
    assert read_recording(tmp_path / "ms.csv").rates == {"PLETH": 125.0}  # and time_ms is no channel


def test_physionet_csv_with_quoted_names_and_a_units_row(tmp_path):
    """PhysioNet's CSV export quotes its names and writes the units in the row under them: "'II'" was no II, and
    "'Elapsed time'" no time column."""
    rows = "".join(f"{k / 125:.3f},{np.sin(k / 9):.3f},{np.cos(k / 9):.3f}\n" for k in range(500))
    (tmp_path / "pn.csv").write_text("'Elapsed time','II','PLETH'\n'seconds','mV','NU'\n" + rows)
    rec = read_recording(tmp_path / "pn.csv")
    assert list(rec.signals) == ["II", "PLETH"] and rec.rates["II"] == 125.0
    assert rec.units == {"II": "mV", "PLETH": "NU"} and not np.isnan(rec.signals["II"]).any()
    np.testing.assert_allclose(rec.signals["II"], np.round(np.sin(np.arange(500) / 9), 3), atol=1e-6)


def test_a_time_column_without_a_unit_is_not_guessed(tmp_path):
    """Read as seconds, "time" in milliseconds at 1 kHz would be a 1 Hz recording: the error names the column."""
    pd.DataFrame({"time": np.arange(100.0), "II": np.zeros(100)}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="column 'time' has no unit"):
        read_recording(tmp_path / "t.csv")


@pytest.mark.parametrize("meta", [{"units": "mV"}, {"units": '["NU"]'}, {"rate_hz": "125 Hz"}, {"units": '{"PLETH": null}'}])
def test_parquet_metadata_of_other_writers_does_not_refuse_the_file(tmp_path, meta):
    """Units or a rate written another way than this package writes them made the file unreadable: "Expecting value:
    line 1 column 1 (char 0)", "could not convert string to float: '125 Hz'", or AttributeError (exit 1)."""
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"PLETH": np.zeros(250, np.float32)}).replace_schema_metadata({"rate_hz": "125", **meta}),
                   path)
    rec = read_recording(path)
    assert rec.rates == {"PLETH": 125.0} and rec.units == {"PLETH": ""}


def test_a_parquet_rate_that_is_no_number_is_named(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"PLETH": np.zeros(250, np.float32)}).replace_schema_metadata({"rate_hz": "fast"}), path)
    with pytest.raises(ValueError, match="'rate_hz' metadata 'fast' is not a rate in Hz"):
        read_recording(path)


@pytest.mark.parametrize("header", ["PLETH,II\n", "time_s,PLETH,II\n"])
def test_a_table_with_a_header_and_no_rows_says_so(tmp_path, header):
    """Was "no numeric signal columns (columns: PLETH, II)" (with a rate given): the columns are there, empty."""
    (tmp_path / "empty.csv").write_text(header)
    with pytest.raises(ValueError, match=r"empty: no samples: the table has no rows \(columns: (time_s, )?PLETH, II\)"):
        read_recording(tmp_path / "empty.csv", rate_hz=125)


def test_an_arterial_line_named_art_reads_as_abp_unless_the_record_has_an_abp_too(tmp_path):
    """MIMIC names the arterial line ART: replayed as ABP it is evidence for the alarm verifier (the wire format's
    name). A record with both keeps both, under their own names, instead of being refused as ambiguous."""
    path = tmp_path / "art.csv"
    pd.DataFrame({"II": [1.0, 2.0], "ART [mmHg]": [80.0, 81.0]}).to_csv(path, index=False)
    rec = read_recording(path, rate_hz=125)
    assert sorted(rec.signals) == ["ABP", "II"] and rec.units["ABP"] == "mmHg"
    both = tmp_path / "both.csv"
    pd.DataFrame({"II": [1.0, 2.0], "ABP": [80.0, 81.0], "ART": [90.0, 91.0]}).to_csv(both, index=False)
    rec = read_recording(both, rate_hz=125)
    assert rec.signals["ABP"].tolist() == [80.0, 81.0] and rec.signals["ART"].tolist() == [90.0, 91.0]


def test_a_csv_time_column_of_iso_date_times_is_read_on_its_clock(tmp_path):
    """Written by a spreadsheet or pandas as text, ISO date-times were refused ("column 'time' has no unit") and,
    under `time_s`, failed with "Unable to parse string" naming neither the file nor the column."""
    import pandas as pd

    df = _frame()
    df["time"] = (pd.Timestamp("2023-11-14 22:13:20") + pd.to_timedelta(df.pop("time_s"), unit="s")).astype(str)
    df.to_csv(tmp_path / "iso.csv", index=False)
    rec = read_recording(tmp_path / "iso.csv")
    assert rec.rates["II"] == 125.0 and rec.start_s == pd.Timestamp("2023-11-14 22:13:20").value / 1e9
    df.rename(columns={"time": "time_s"}).to_csv(tmp_path / "iso_s.csv", index=False)
    with pytest.raises(ValueError, match=r"time column 'time_s': data row 1 holds '2023-11-14 22:13:20.000', not a "
                                         r"number: name a column of date-times"):
        read_recording(tmp_path / "iso_s.csv")
    # a time_s of numbers with one stray text value names that value's row, without date-time advice
    df = _frame()
    df["time_s"] = df["time_s"].astype(str)
    df.loc[10, "time_s"] = "x"
    df.to_csv(tmp_path / "stray.csv", index=False)
    with pytest.raises(ValueError, match=r"data row 11 holds 'x', not a number$"):
        read_recording(tmp_path / "stray.csv")
    # the rate given, a text timestamp beside it is not parsed (nor refused)
    df = _frame()
    df["timestamp"] = "-"
    df.drop(columns="time_s").to_csv(tmp_path / "rated.csv", index=False)
    assert read_recording(tmp_path / "rated.csv", rate_hz=125.0).rates["II"] == 125.0
