"""Alarm verification: the algorithm on built scenarios, the messages and their schemas, the per-bed ring,
the judge's timing, `wavebridge alarm-check`, and a few real Challenge records when ../shared is there."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators.processing import alarms as core
from operators.io.synthetic import synthesize
from operators.translator import load_translator
from stream import alarms as sa
from stream import wire
from stream.tools import alarm_check
from tests.conftest import REPO

RATE = 125.0
ONSET_S = 90.0


@pytest.fixture(scope="module")
def clean():
    rec = synthesize(seconds=100.0, rate_hz=RATE, seed=3)
    return {"II": rec.signals["II"].astype(np.float64), "PLETH": rec.signals["PLETH"].astype(np.float64)}


@pytest.fixture(scope="module")
def classic():
    return load_translator("classic")


def _rates(signals):
    return {k: RATE for k in signals}


def _stop_heart(signals, from_s, rng):
    """A real asystole: from `from_s` no QRS (low-amplitude noise on the ECG) and no pulse (PLETH at its
    diastolic level with a little noise)."""
    out = {k: v.copy() for k, v in signals.items()}
    i = int(from_s * RATE)
    out["II"][i:] = 0.02 * rng.standard_normal(len(out["II"]) - i)
    out["PLETH"][i:] = np.percentile(out["PLETH"][:i], 10) + 0.003 * rng.standard_normal(len(out["PLETH"]) - i)
    return out


@pytest.mark.parametrize("alarm_type", core.ALARM_TYPES)
def test_regular_72bpm_contradicts_every_alarm_type(clean, alarm_type):
    v = core.verify_alarm(alarm_type, clean, _rates(clean), ONSET_S)
    assert v.verdict == "false", (v.reason, [c.to_dict() for c in v.channels])
    assert v.confidence >= 0.5
    # the flag a consumer may act on without reading the type never lets an asystole or VF go
    assert v.keep_alarm == (alarm_type in (core.ASYSTOLE, core.VFIB))
    ii = next(c for c in v.channels if c.name == "II")
    assert ii.quality == "good" and 65 < ii.hr_bpm < 80
    assert all(-16.0 <= b <= 0.0 for b in ii.beats_s)  # real-time: nothing after the onset


def test_true_asystole_is_kept(clean):
    sig = _stop_heart(clean, ONSET_S - 6.0, np.random.default_rng(0))
    for mode in core.MODES:
        v = core.verify_alarm("asystole", sig, _rates(sig), ONSET_S, mode=mode, wait_s=5.0)
        assert v.verdict != "false", (mode, v.reason, [c.to_dict() for c in v.channels])
        assert v.false_score < 0.25


def test_true_asystole_kept_with_the_synthesized_ecg(clean, classic):
    """The translator fills a pulseless PLETH with beats at the last rate; those must never count."""
    sig = _stop_heart(clean, ONSET_S - 6.0, np.random.default_rng(1))
    sig, rates = core.add_synthesized_ecg(sig, _rates(sig), classic, ONSET_S)
    v = core.verify_alarm("asystole", sig, rates, ONSET_S)
    synth = next(c for c in v.channels if c.name == core.SYNTH)
    assert synth.max_gap_s >= 4.0 and synth.contradicts == 0.0
    assert v.verdict != "false"


def test_judging_many_alarms_keeps_one_context_in_the_translator_cache(clean):
    """Each verdict's synthesized ECG takes a context of its own: keyed by that object, the translator's cache kept
    every alarm's context and beat model until it was full (4096 entries, about 67 MiB). One slot serves them all."""
    from operators.classic import ClassicTranslator

    tr = ClassicTranslator()
    for k in range(5):
        sig = {name: x.copy() + 0.01 * k for name, x in clean.items()}
        core.add_synthesized_ecg(sig, _rates(sig), tr, ONSET_S)
    assert len(tr._cache) == 1


def test_ecg_lead_off_pulses_and_synthesized_ecg_refute_asystole(clean, classic):
    """Lead II off (flat): no ECG evidence; the pulsatile PLETH and the ECG drawn from it show the beats."""
    sig = {k: v.copy() for k, v in clean.items()}
    sig["II"][int((ONSET_S - 10.0) * RATE):] = sig["II"][int((ONSET_S - 10.0) * RATE)]
    sig, rates = core.add_synthesized_ecg(sig, _rates(sig), classic, ONSET_S)
    v = core.verify_alarm("asystole", sig, rates, ONSET_S)
    by = {c.name: c for c in v.channels}
    assert by["II"].quality != "good" and by["II"].contradicts * by["II"].quality_score < 0.5
    assert by["PLETH"].quality == "good" and by["PLETH"].contradicts == 1.0
    assert by[core.SYNTH].quality == "good" and by[core.SYNTH].contradicts == 1.0
    assert abs(by[core.SYNTH].hr_bpm - by["PLETH"].hr_bpm) < 3.0
    assert v.verdict == "false"
    # without the pulse channels the same alarm cannot be refuted
    ecg_only = core.verify_alarm("asystole", {"II": sig["II"]}, {"II": RATE}, ONSET_S)
    assert ecg_only.verdict != "false"


@pytest.mark.parametrize("alarm_type", [core.ASYSTOLE, core.BRADY])
def test_a_probe_off_stretch_before_the_onset_shows_no_pause(clean, classic, alarm_type):
    """PLETH held flat 15-10 s before the onset (a probe off and back on, the heart beating throughout): the flat
    stretch is no pulse seen, not a pause; it once made PLETH and II_SYNTH "show" the alarm, verdict true."""
    sig = {k: v.copy() for k, v in clean.items()}
    i, j = int((ONSET_S - 15.0) * RATE), int((ONSET_S - 10.0) * RATE)
    sig["PLETH"][i:j] = sig["PLETH"][i]
    sig, rates = core.add_synthesized_ecg(sig, _rates(sig), classic, ONSET_S)
    for chans in (sig, {k: v for k, v in sig.items() if k != "II"}):  # with lead II, and with PLETH alone
        v = core.verify_alarm(alarm_type, chans, {k: rates[k] for k in chans}, ONSET_S)
        pleth = next(c for c in v.channels if c.name == "PLETH")
        assert pleth.quality != "good" and pleth.max_gap_s > 4.0  # the flat stretch is there, and judged
        assert all(c.supports == 0.0 for c in v.channels), [c.to_dict() for c in v.channels]
        assert v.verdict != "true", v.reason


def test_noise_alone_never_refutes(clean):
    rng = np.random.default_rng(2)
    noise = {"II": rng.standard_normal(len(clean["II"])), "PLETH": rng.standard_normal(len(clean["PLETH"]))}
    for t in (core.ASYSTOLE, core.VFIB, core.VTACH):
        assert core.verify_alarm(t, noise, _rates(noise), ONSET_S).verdict != "false", t


def test_realtime_reads_nothing_after_the_onset(clean):
    after = {k: v.copy() for k, v in clean.items()}
    rng = np.random.default_rng(3)
    for v in after.values():
        v[int(ONSET_S * RATE):] = rng.standard_normal(len(v) - int(ONSET_S * RATE)) * 5
    a = core.verify_alarm("bradycardia", clean, _rates(clean), ONSET_S)
    b = core.verify_alarm("bradycardia", after, _rates(after), ONSET_S)
    assert a.to_dict() == b.to_dict()
    r = core.verify_alarm("bradycardia", clean, _rates(clean), ONSET_S, mode="retrospective", wait_s=5.0)
    assert r.window_s == (-16.0, 5.0) and max(next(c for c in r.channels if c.name == "II").beats_s) > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown alarm type"):
        core.verify_alarm("afib", {}, {}, 1.0)
    with pytest.raises(ValueError, match="mode"):
        core.verify_alarm("asystole", {}, {}, 1.0, mode="later")
    v = core.verify_alarm("asystole", {}, {}, 1.0)
    assert v.verdict == "uncertain" and v.keep_alarm and v.channels == ()


def test_challenge_score():
    s = core.challenge_score([True, True, False, False], [True, False, False, True])
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (1, 1, 1, 1)
    assert s["score"] == pytest.approx(2 / (2 + 1 + 5))
    assert core.parse_alarm_type("Ventricular_Flutter_Fib") == core.VFIB
    assert core.parse_alarm_type("vt") == core.VTACH


# ---------------------------------------------------------------- messages and schemas


def _schema(name):
    return json.loads((REPO / "docs" / name).read_text())


GOOD_ALARM = {"bed_id": "bed-001", "alarm_type": "asystole", "onset_ns": 1_750_000_000_000_000_000, "alarm_id": "m-17"}


@pytest.mark.parametrize("change, ok", [
    ({}, True),
    ({"mode": "retrospective", "source": "gw-3"}, True),
    ({"bed_id": "bed 001"}, False),
    ({"alarm_type": "Asystole"}, False),
    ({"onset_ns": 1.5}, False),
    ({"onset_ns": -1}, False),
    ({"alarm_id": ""}, False),
    ({"mode": "soon"}, False),
    ({"alarm_id": None}, False),
])
def test_alarm_schema_and_parser_agree(change, ok):
    import jsonschema

    msg = {**GOOD_ALARM, **change}
    schema_ok = jsonschema.Draft202012Validator(_schema("alarm.schema.json")).is_valid(msg)
    try:
        sa.parse_alarm(json.dumps(msg).encode())
        parsed = True
    except sa.AlarmMessageError:
        parsed = False
    assert schema_ok == parsed == ok


def test_alarm_parser_errors_are_one_line():
    for bad in (b"{nope", b"[]", json.dumps({"bed_id": "b"}).encode()):
        with pytest.raises(sa.AlarmMessageError) as e:
            sa.parse_alarm(bad)
        assert "\n" not in str(e.value)
    missing = {k: v for k, v in GOOD_ALARM.items() if k != "onset_ns"}
    with pytest.raises(sa.AlarmMessageError, match="onset_ns"):
        sa.parse_alarm(missing)
    assert sa.parse_alarm(sa.encode_alarm(sa.parse_alarm(GOOD_ALARM))) == sa.parse_alarm(GOOD_ALARM)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_literals_make_an_alarm_bad(token):
    """As for waveform chunks (stream.wire): JSON has no NaN or Infinity, though Python's reader takes them, so an
    alarm holding one anywhere is refused, not judged."""
    good = json.dumps({**GOOD_ALARM, "source": "gw-3"})
    with pytest.raises(sa.AlarmMessageError, match=token.lstrip("-")):
        sa.parse_alarm(good.replace('"gw-3"', token).encode())


def test_verdict_message_validates_and_goes_to_influx(clean):
    import jsonschema

    alarm = sa.parse_alarm(GOOD_ALARM)
    v = core.verify_alarm("asystole", clean, _rates(clean), ONSET_S)
    msg = sa.verdict_message(alarm, v, 30.0, alarm.onset_ns + 1)
    jsonschema.validate(json.loads(json.dumps(msg)), _schema("verdict.schema.json"))
    # a false asystole keeps its alarm (only a person silences it); a false bradycardia may let it go
    assert msg["verdict"] == "false" and msg["keep_alarm"] is True and msg["wait_s"] == 0.0
    brady = sa.verdict_message(alarm, core.verify_alarm("bradycardia", clean, _rates(clean), ONSET_S), 30.0, None)
    assert brady["verdict"] == "false" and brady["keep_alarm"] is False
    empty = sa.verdict_message(alarm, core.verify_alarm("asystole", {}, {}, 1.0), 30.0, None)
    jsonschema.validate(json.loads(json.dumps(empty)), _schema("verdict.schema.json"))
    (line,) = sa.verdict_lines(msg)
    assert line.startswith("alarm_verdict,alarm_type=asystole,bed=bed-001,mode=realtime,verdict=false ")
    assert line.endswith(f" {alarm.onset_ns}") and 'alarm_id="m-17"' in line and "keep_alarm=true" in line


# ---------------------------------------------------------------- ring and judge

T0 = 1_750_000_000_000_000_000


def _chunks(signals, bed, start_ns=T0, chunk_s=1.0):
    n = int(chunk_s * RATE)
    for name, x in signals.items():
        for seq, i in enumerate(range(0, len(x), n)):
            yield wire.Chunk(bed, name, RATE, start_ns + int(round(i * 1e9 / RATE)), seq,
                             np.asarray(x[i:i + n], dtype=np.float32))


def test_ring_is_bounded_and_places_samples_on_their_grid(clean):
    clock = [0.0]
    ring = sa.SignalRing(keep_s=20.0, max_beds=2, clock=lambda: clock[0])
    for c in _chunks(clean, "a"):
        ring.add(c)
    end = T0 + int(100 * 1e9)
    assert ring.newest_ns("a") == end
    assert ring.samples() <= 2 * (20 + 1) * RATE  # two signals, keep_s plus one chunk each
    sig, rates = ring.snapshot("a", end - int(10e9), end)
    assert rates == {"II": RATE, "PLETH": RATE}
    np.testing.assert_array_equal(sig["II"], clean["II"][-int(10 * RATE):].astype(np.float32))
    # older than what is kept: NaN, not shifted data
    old, _ = ring.snapshot("a", end - int(30e9), end)
    assert np.isnan(old["II"][: int(9 * RATE)]).all() and np.isfinite(old["II"][-int(20 * RATE):]).all()
    clock[0] = 10.0
    assert ring.add(next(_chunks(clean, "b")))
    assert not ring.add(next(_chunks(clean, "c")))  # full of beds heard within keep_s: the new one is refused
    assert ring.refused("c") and ring.newest_ns("c") is None and ring.newest_ns("a") == end
    clock[0] = 25.0  # "a" silent for longer than keep_s: forgotten once room is needed
    assert ring.add(next(_chunks(clean, "c")))
    assert ring.beds() == ["b", "c"] and ring.newest_ns("a") is None and not ring.refused("c")


def test_ring_keeps_late_chunks_by_the_newest_end_and_forgets_an_evicted_bed(clean):
    clock = [0.0]
    ring = sa.SignalRing(keep_s=20.0, max_beds=1, clock=lambda: clock[0])
    chunks = list(_chunks(clean, "a"))
    ii = [c for c in chunks if c.signal == "II"]
    for c in ii[30:60]:
        ring.add(c)
    ring.add(ii[45])  # re-delivered: kept, the newest end is unchanged
    ring.add(ii[5])  # late, older than keep_s behind the newest: kept until the chunks before it go
    assert ring.newest_ns("a") == ii[59].end_ns()
    for c in ii[60:100]:
        ring.add(c)
    assert ring.newest_ns("a") == ii[99].end_ns()
    assert ring.samples() == 21 * len(ii[0].samples)  # ii[79:100]: keep_s plus one chunk, the late ones gone
    clock[0] = 21.0
    ring.add(next(_chunks(clean, "b")))  # max_beds=1, "a" silent for longer than keep_s: it goes
    clock[0] = 42.0
    for c in ii[:3]:  # "a" comes back with older data: judged against its own new chunks only
        ring.add(c)
    assert ring.newest_ns("a") == ii[2].end_ns()
    sig, _ = ring.snapshot("a", ii[0].start_ns, ii[2].end_ns())
    np.testing.assert_array_equal(sig["II"], np.concatenate([c.samples for c in ii[:3]]))


def test_a_full_ring_keeps_its_beds_whole_and_says_why_a_new_bed_has_no_verdict(clean):
    """More beds than the ring holds, all sending in turn: dropping the least recently heard bed for each new one
    would leave every bed with one chunk and every alarm without data. The beds it holds keep their history; a
    bed beyond them gets an `uncertain` verdict that says the ring was full, not one judged on nothing."""
    ring = sa.SignalRing(keep_s=120.0, max_beds=3, clock=lambda: 0.0)
    beds = ["b0", "b1", "b2", "b3"]
    streams = {b: list(_chunks(clean, b)) for b in beds}
    kept = {b: [ring.add(c) for c in streams[b]] for b in beds}  # one bed after the other, as rounds would too
    for b in beds[:3]:
        assert all(kept[b])
    assert not any(kept["b3"])
    onset = T0 + int(ONSET_S * 1e9)
    judge = sa.AlarmJudge(ring)
    for bed in ("b0", "b3"):
        judge.submit(sa.AlarmMessage(bed, "asystole", onset, f"a-{bed}"), now=0.0)
    msgs = {p.alarm.bed_id: judge.judge(p) for p in judge.due(now=10.0)}
    assert msgs["b0"]["verdict"] == "false" and msgs["b0"]["channels"]
    assert msgs["b3"]["verdict"] == "uncertain" and not msgs["b3"]["channels"]
    assert msgs["b3"]["reason"].startswith("refused: this worker's alarm ring holds 3 beds")


def test_judge_waits_for_data_then_answers(clean):
    ring = sa.SignalRing(keep_s=120.0)
    judge = sa.AlarmJudge(ring, mode="realtime", wait_s=5.0, grace_s=2.0)
    onset = T0 + int(ONSET_S * 1e9)
    chunks = list(_chunks(clean, "bed-1"))
    early = [c for c in chunks if c.end_ns() <= onset - int(10e9)]
    for c in early:
        ring.add(c)
    judge.submit(sa.parse_alarm({**GOOD_ALARM, "bed_id": "bed-1", "onset_ns": onset}), now=0.0)
    judge.submit(sa.parse_alarm({**GOOD_ALARM, "bed_id": "bed-1", "onset_ns": onset, "alarm_id": "r",
                                 "mode": "retrospective"}), now=0.0)
    assert judge.due(now=1.0) == [] and judge.pending == 2  # data not there yet, deadline not reached
    for c in chunks:
        if c.end_ns() > onset - int(10e9) and c.end_ns() <= onset + int(1e9):
            ring.add(c)
    (rt,) = judge.due(now=1.0)  # real-time: data reached the onset
    assert rt.mode == "realtime" and judge.pending == 1
    msg = judge.judge(rt)
    assert msg["verdict"] == "false" and msg["mode"] == "realtime"
    assert judge.due(now=6.0) == []  # retrospective needs 5 s after the onset or its deadline (7 s)
    (late,) = judge.due(now=7.5)
    msg = judge.judge(late)
    # judged at its deadline with data 1 s past the onset: the window says so, not the 5 s waited for
    assert msg["mode"] == "retrospective" and msg["wait_s"] == 5.0 and msg["window_s"] == [-16.0, 1.0]


def test_judge_without_data_is_uncertain():
    judge = sa.AlarmJudge(sa.SignalRing(), grace_s=0.0)
    judge.submit(sa.parse_alarm(GOOD_ALARM), now=0.0)
    (p,) = judge.due(now=0.1)
    msg = judge.judge(p)
    assert msg["verdict"] == "uncertain" and msg["keep_alarm"] and msg["data_until_ns"] is None


def _slow(x, rate_hz):
    """`x` (at RATE) resampled to `rate_hz` by picking samples."""
    return np.asarray(x)[::int(round(RATE / rate_hz))]


@pytest.mark.parametrize("rates", [{"II": 2.0, "PLETH": 1.0}, {"II": 1.0}, {"PLETH": 1.0}, {"II": 2.0, "ABP": 2.0}])
def test_a_channel_too_slow_to_analyse_is_reported_unusable_not_judged(clean, rates):
    """The wire allows 1 Hz: such a channel raised inside the R-peak detector's filter (and crashed the worker)."""
    import jsonschema

    sig = {k: _slow(clean["PLETH" if k == "ABP" else k], r) for k, r in rates.items()}
    for mode in core.MODES:
        v = core.verify_alarm(core.ASYSTOLE, sig, rates, ONSET_S, mode=mode)
        assert v.verdict == "uncertain" and v.keep_alarm, v.reason
        assert sorted(c.name for c in v.channels) == sorted(rates)
        for c in v.channels:
            assert c.quality == "unusable" and c.reason.startswith(core.RATE_TOO_LOW)
            assert f"{rates[c.name]:g} Hz" in c.reason
            assert c.contradicts == 0.0 and c.supports == 0.0
        msg = sa.verdict_message(sa.parse_alarm(GOOD_ALARM), v, 0.0, None)
        jsonschema.validate(json.loads(json.dumps(msg)), _schema("verdict.schema.json"))


def test_a_slow_channel_leaves_the_others_judged(clean, classic):
    sig = {"II": clean["II"], "PLETH": _slow(clean["PLETH"], 1.0)}
    rates = {"II": RATE, "PLETH": 1.0}
    sig2, rates2 = core.add_synthesized_ecg(sig, rates, classic, ONSET_S)
    assert core.SYNTH not in sig2  # no II_SYNTH from a PLETH too slow to analyse
    v = core.verify_alarm(core.ASYSTOLE, sig2, rates2, ONSET_S)
    by = {c.name: c for c in v.channels}
    assert by["PLETH"].reason.startswith(core.RATE_TOO_LOW)
    # II is judged (its beats contradict); alone, one lead never suppresses an asystole (NEVER_ON_ONE_LEAD)
    assert by["II"].contradicts == 1.0 and v.verdict == "uncertain" and v.reason.startswith("only II contradicts")


def test_judge_turns_an_unexpected_error_into_an_uncertain_verdict(clean, monkeypatch, caplog):
    """One alarm's failure must not crash the worker (and lose the other beds' verdicts): uncertain, error named."""
    import jsonschema

    ring = sa.SignalRing(keep_s=120.0)
    for c in _chunks(clean, "bed-1"):
        ring.add(c)
    judge = sa.AlarmJudge(ring, mode="realtime", wait_s=5.0, grace_s=2.0)
    onset = T0 + int(ONSET_S * 1e9)
    judge.submit(sa.parse_alarm({**GOOD_ALARM, "bed_id": "bed-1", "onset_ns": onset}), now=0.0)
    judge.submit(sa.parse_alarm({**GOOD_ALARM, "bed_id": "bed-1", "onset_ns": onset, "alarm_id": "r",
                                 "mode": "retrospective"}), now=0.0)
    bad, retro = judge.due(now=10.0)

    def boom(*args, **kwargs):
        raise ValueError("x" * 100_000)

    monkeypatch.setattr(core, "verify_alarm", boom)
    with caplog.at_level("ERROR", logger="wavebridge.alarms"):
        msg = judge.judge(bad)
        msg_r = judge.judge(retro)
    assert msg["verdict"] == "uncertain" and msg["keep_alarm"] and msg["channels"] == []
    assert msg["reason"].startswith("judging failed: ValueError: xxx") and len(msg["reason"]) < 300
    assert msg["window_s"] == [-16.0, 0.0] and msg_r["window_s"] == [-16.0, 5.0]
    jsonschema.validate(json.loads(json.dumps(msg)), _schema("verdict.schema.json"))
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all(r.exc_info for r in errors) and "m-17" in errors[0].getMessage()


# ---------------------------------------------------------------- CLI and Challenge records


def test_alarm_check_cli_errors_and_help(capsys, tmp_path):
    """A user's mistake (no such record, not a WFDB record, no alarm type, a bad option) is one line and exit 2,
    as for `wavebridge translate`; a .csv names what is wrong, not a missing "clean.csv.hea"."""
    import wfdb

    from stream.tools.cli import main

    (tmp_path / "clean.csv").write_text("PLETH,II\n" + "0.1,0.2\n" * 500)
    wfdb.wrsamp("noalarm", fs=250, units=["mV"], sig_name=["II"], write_dir=str(tmp_path),
                p_signal=np.zeros((250 * 310, 1)), fmt=["16"])  # a WFDB record whose header names no alarm
    wfdb.wrsamp("fs0", fs=250, units=["mV"], sig_name=["II"], write_dir=str(tmp_path),
                p_signal=np.zeros((250 * 310, 1)), fmt=["16"], comments=["Asystole", "False alarm"])
    hea = tmp_path / "fs0.hea"  # a frequency of 0 in the record line ended in ZeroDivisionError, exit 1
    hea.write_text(hea.read_text().replace("fs0 1 250 ", "fs0 1 0 ", 1))
    cases = [([str(tmp_path / "nothing")], "not a WFDB record"),
             ([str(tmp_path / "clean.csv")], "not a WFDB record"),
             ([str(tmp_path)], "not a WFDB record"),
             ([str(tmp_path / "noalarm")], "no alarm type"),
             ([str(tmp_path / "fs0")], "invalid sampling frequency 0 Hz"),
             ([str(tmp_path / "noalarm"), "--translator", "bogus"], "--translator: translator spec 'bogus'"),
             ([str(tmp_path / "noalarm"), "--wait-s", "-1"], "--wait-s"),
             ([str(tmp_path / "noalarm"), "--mode", "later"], "--mode")]
    for args, says in cases:
        assert main(["alarm-check", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("wavebridge alarm-check: error:") and err.count("\n") == 1, err
        assert says in err and "Errno" not in err, err
    # the type as another exporter may case it is read; a type the Challenge does not know is named
    wfdb.wrsamp("lower", fs=250, units=["mV"], sig_name=["II"], write_dir=str(tmp_path),
                p_signal=np.zeros((250 * 310, 1)), fmt=["16"], comments=["asystole", "false alarm"])
    assert core.read_challenge_record(tmp_path / "lower").alarm_type == core.ASYSTOLE
    wfdb.wrsamp("bigeminy", fs=250, units=["mV"], sig_name=["II"], write_dir=str(tmp_path),
                p_signal=np.zeros((250 * 310, 1)), fmt=["16"], comments=["Bigeminy"])
    assert main(["alarm-check", str(tmp_path / "bigeminy")]) == 2
    assert "they read: Bigeminy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        alarm_check.cli(["--help"])
    out = capsys.readouterr().out
    assert "(default: realtime)" in out and "(default: 30.0)" in out


@pytest.fixture
def challenge(shared_data) -> Path:
    d = shared_data / "challenge2015"
    if not (d / "RECORDS").exists():
        pytest.skip(f"Challenge 2015 records not found under {d}")
    return d


def test_reads_challenge_records(challenge):
    for name, atype in (("a109l", core.ASYSTOLE), ("b183l", core.BRADY), ("v100s", core.VTACH)):
        rec = core.read_challenge_record(challenge / name)
        assert rec.alarm_type == atype and rec.onset_s == 300.0 and rec.label is not None
        assert set(rec.rates_hz.values()) == {250.0}
        assert all(len(x) >= 300 * 250 for x in rec.signals.values())


def test_alarm_check_json_on_challenge_records(challenge, capsys):
    from stream.tools.cli import main

    labels = dict(line.split(",")[0::2] for line in (challenge / "ALARMS").read_text().split())
    for name in ("a109l", "f545l"):  # a false asystole with a clean arterial line; a true VF
        assert main(["alarm-check", str(challenge / name), "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["verdict"] in core.VERDICTS and d["record"] == name and d["mode"] == "realtime"
        assert d["label"] == ("true" if labels[name] == "1" else "false")
        if labels[name] == "1":
            assert d["verdict"] != "false" and d["keep_alarm"]  # a true VF is never suppressed
        else:
            assert d["verdict"] == "false"
    assert main(["alarm-check", str(challenge / "f545l"), "--json", "--mode", "retrospective", "--wait-s", "10"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "retrospective" and d["window_s"] == [-16.0, 10.0]


def _pulse_train(times_s, amps, seconds, rate_hz=RATE):
    """A PLETH-like wave: one smooth pulse (0.12 s rise, slower decay) per time, of the given amplitude."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    x = np.zeros_like(t)
    for t0, a in zip(times_s, amps):
        d = t - t0
        m = (d > -0.5) & (d < 1.0)
        x[m] += a * np.exp(-0.5 * (d[m] / np.where(d[m] < 0, 0.12, 0.25)) ** 2)
    return x


def test_regular_pulse_refutes_vt_on_a_noisy_ecg(clean):
    """ECG noise that the monitor took for a ventricular run leaves the pulse regular: PLETH refutes the VT,
    where the ECG alone cannot."""
    sig = {k: v.copy() for k, v in clean.items()}
    i = int((ONSET_S - 6.0) * RATE)
    sig["II"][i:] += 2.0 * np.random.default_rng(4).standard_normal(len(sig["II"]) - i)
    v = core.verify_alarm(core.VTACH, sig, _rates(sig), ONSET_S)
    pleth = next(c for c in v.channels if c.name == "PLETH")
    assert pleth.quality == "good" and pleth.contradicts == 1.0, pleth.to_dict()
    assert v.verdict == "false" and "PLETH" in v.reason
    assert core.verify_alarm(core.VTACH, {"II": sig["II"]}, {"II": RATE}, ONSET_S).keep_alarm


def test_pulse_disturbed_by_a_ventricular_run_does_not_refute_vt():
    """Six premature beats at 150 bpm eject small pulses and end in a pause: the pulse is irregular, so it
    says nothing against the VT."""
    beats = list(np.arange(1.0, ONSET_S - 8.0, 0.8))
    run = [beats[-1] + 0.4 * (k + 1) for k in range(6)]
    after = list(np.arange(run[-1] + 1.2, ONSET_S + 5.0, 0.8))
    times = beats + run + after
    amps = [1.0] * len(beats) + [0.4] * len(run) + [1.0] * len(after)
    pleth = _pulse_train(times, amps, ONSET_S + 10.0)
    v = core.verify_alarm(core.VTACH, {"PLETH": pleth}, {"PLETH": RATE}, ONSET_S)
    c = v.channels[0]
    assert len(c.beats_s) >= core.VT_PULSE_MIN_BEATS and c.contradicts == 0.0, c.to_dict()
    assert v.keep_alarm
    # the same channel with the run replaced by regular pulses refutes it
    steady = _pulse_train(np.arange(1.0, ONSET_S + 5.0, 0.8), np.ones(200), ONSET_S + 10.0)
    w = core.verify_alarm(core.VTACH, {"PLETH": steady}, {"PLETH": RATE}, ONSET_S)
    assert w.channels[0].contradicts == 1.0 and w.verdict == "false"


def _wide_run(signals, start_s, seconds, bpm, rng):
    """A run of wide, slurred complexes (a smooth 0.2 s half-sine per beat, twice the R amplitude) replacing
    lead II from `start_s`: what a ventricular run looks like and what the beat detector tends to miss."""
    out = {k: v.copy() for k, v in signals.items()}
    ii = out["II"]
    i0, n = int(start_s * RATE), int(seconds * RATE)
    amp = 2.0 * float(np.percentile(ii[:i0], 99.5) - np.median(ii[:i0]))
    t = np.arange(n) / RATE
    phase = (t * bpm / 60.0) % 1.0
    beat = np.where(phase < 0.4, np.sin(np.pi * phase / 0.4), 0.0)
    ii[i0:i0 + n] = np.median(ii[:i0]) + amp * beat + 0.01 * rng.standard_normal(n)
    return out


def test_unexplained_rhythmic_activity_keeps_a_vt():
    """A ventricular run the beat detector may miss must not let the lead vouch against the VT: its activity
    is not explained by beats like the patient's own, and it repeats at a VT rate."""
    base = synthesize(seconds=100.0, rate_hz=RATE, seed=5)
    sig = _wide_run({"II": base.signals["II"].astype(np.float64)}, ONSET_S - 6.0, 3.0, 150.0,
                    np.random.default_rng(6))
    v = core.verify_alarm(core.VTACH, sig, _rates(sig), ONSET_S)
    ii = v.channels[0]
    assert ii.unexplained_s is not None and ii.unexplained_s >= core.VT_UNEXPLAINED_S[1], ii.to_dict()
    assert ii.contradicts == 0.0 and v.keep_alarm
    # the same lead without the run explains all its activity and refutes the VT by rate and shape
    clean = core.verify_alarm(core.VTACH, {"II": base.signals["II"].astype(np.float64)}, {"II": RATE}, ONSET_S)
    assert clean.channels[0].unexplained_s < core.VT_UNEXPLAINED_S[0] and clean.verdict == "false"


def test_retrospective_judges_the_window_before_the_onset(clean):
    """The Challenge's event precedes the alarm: noise after the onset changes nothing in retrospective mode,
    while the beats after the onset are still reported."""
    after = {k: v.copy() for k, v in clean.items()}
    rng = np.random.default_rng(8)
    for v in after.values():
        v[int(ONSET_S * RATE):] = rng.standard_normal(len(v) - int(ONSET_S * RATE)) * 5
    for t in core.ALARM_TYPES:
        a = core.verify_alarm(t, clean, _rates(clean), ONSET_S, mode="retrospective", wait_s=5.0)
        b = core.verify_alarm(t, after, _rates(after), ONSET_S, mode="retrospective", wait_s=5.0)
        r = core.verify_alarm(t, clean, _rates(clean), ONSET_S)
        assert a.false_score == b.false_score == r.false_score and a.verdict == b.verdict == "false", t
        assert max(next(c for c in a.channels if c.name == "II").beats_s) > 0


def _evidence(name, kind, contradicts=0.0, supports=0.0):
    return core.ChannelEvidence(name=name, kind=kind, quality="good", quality_score=1.0, onset_ok=True, reason="",
                                beats_s=(), hr_bpm=None, max_gap_s=1.0, hr5_min_bpm=None, hr5_max_bpm=None,
                                hr17_max_bpm=None, abnormal_run=None, contradicts=contradicts, supports=supports)


@pytest.mark.parametrize("alarm_type", [core.ASYSTOLE, core.VFIB])
def test_one_ecg_lead_alone_never_silences_an_asystole_or_vf(alarm_type):
    """A lead's beats may be an artifact shaped like the patient's QRS: with no other channel usable at the onset
    the verdict is uncertain (kept), not false; a second usable channel, or a pulse channel alone, still refutes."""
    from dataclasses import replace

    ii = _evidence("II", "ecg", contradicts=1.0)
    off = replace(_evidence("PLETH", "pulse"), quality="unusable", quality_score=0.0, onset_ok=False)
    synth = _evidence(core.SYNTH, "synth", contradicts=1.0)  # PLETH's beats: not a second channel
    for chans in ([ii], [ii, off], [ii, off, synth]):
        v = core.fuse(alarm_type, "realtime", chans, 0.9, (-16.0, 0.0))
        assert (v.verdict, v.false_score, v.keep_alarm) == ("uncertain", 0.0, True), v
        assert v.reason.startswith("only II contradicts")
    assert core.fuse(alarm_type, "realtime", [ii, _evidence("V", "ecg", contradicts=1.0)], 0.9,
                     (-16.0, 0.0)).verdict == "false"
    assert core.fuse(alarm_type, "realtime", [ii, _evidence("V", "ecg")], 0.9, (-16.0, 0.0)).verdict == "false"
    assert core.fuse(alarm_type, "realtime", [_evidence("PLETH", "pulse", contradicts=1.0)], 0.9,
                     (-16.0, 0.0)).verdict == "false"


def test_bradycardia_in_one_lead_that_another_clean_lead_contradicts_is_missed_beats():
    chans = [_evidence("II", "ecg", supports=1.0), _evidence("V", "ecg", contradicts=1.0)]
    assert core.fuse(core.BRADY, "realtime", chans, 0.5, (-16.0, 0.0)).false_score == 1.0
    # a pulse channel does not discount an ECG lead's support (it may count dicrotic notches as beats) ...
    pulse = [chans[0], _evidence("PLETH", "pulse", contradicts=1.0)]
    assert core.fuse(core.BRADY, "realtime", pulse, 0.5, (-16.0, 0.0)).false_score == 0.0
    # ... and asystole keeps the plain rule: any support is subtracted
    assert core.fuse(core.ASYSTOLE, "realtime", chans, 0.9, (-16.0, 0.0)).false_score == 0.0


def test_asystole_a_pause_of_two_pulse_intervals_does_not_refute_it():
    """Pulses at most 1.8 s apart but with a pause of 1.8 usual intervals (the held-out true asystole a161l)
    must not refute an asystole; steady pulses do."""
    args = dict(n_beats=15, gap=1.83, hr5=(None, None), hr17max=None, abnormal=0, win_len_s=16.0, median_rr=1.04)
    for kind in ("pulse", "ecg"):
        assert core._judge(core.ASYSTOLE, kind, **args)[0] < core.SAFETY_FLOOR[core.ASYSTOLE]
        assert core._judge(core.ASYSTOLE, kind, **{**args, "gap": 1.1})[0] == 1.0


def test_wide_complex_tachycardia_is_not_refuted_by_its_own_shape():
    """A tachycardia whose usual beat is already wide (the whole learning span in VT, or a bundle-branch block)
    looks like its own template: shape cannot vouch against a VT there; a narrow one at the same rate can."""
    ii = synthesize(seconds=100.0, rate_hz=RATE, seed=9, mean_hr=120.0).signals["II"].astype(np.float64)
    win = np.hanning(int(0.16 * RATE))  # QRS half-amplitude width ~24 -> ~64 ms
    wide = np.convolve(ii, win / win.sum(), mode="same") * 4.0
    narrow_v = core.verify_alarm(core.VTACH, {"II": ii}, {"II": RATE}, ONSET_S)
    wide_v = core.verify_alarm(core.VTACH, {"II": wide}, {"II": RATE}, ONSET_S)
    assert narrow_v.channels[0].hr5_max_bpm > 100.0 and narrow_v.verdict == "false", narrow_v.channels[0].to_dict()
    assert wide_v.channels[0].contradicts == 0.0 and wide_v.keep_alarm, wide_v.channels[0].to_dict()


def test_a_pulse_keeping_its_rhythm_through_unexplained_ecg_activity_shows_it_is_noise():
    """Unexplained, rhythmic ECG activity from -5 s for 2 s keeps a VT alarm unless a usable pulse keeps its
    rhythm through that stretch (a ventricular run changes what the pulse follows)."""
    lead = core.ChannelEvidence(name="II", kind="ecg", quality="good", quality_score=1.0, onset_ok=True, reason="",
                                beats_s=tuple(np.arange(-15.6, 0.0, 0.8)), hr_bpm=75.0, max_gap_s=1.0,
                                hr5_min_bpm=70.0, hr5_max_bpm=80.0, hr17_max_bpm=None, abnormal_run=0,
                                contradicts=0.0, supports=0.0, unexplained_s=2.0, unexplained_from_s=-5.0,
                                usual_width_s=0.03)
    # irregular early on (so the whole-window regularity rule does not refute), steady through the stretch
    steady = tuple(np.concatenate([[-15.9, -15.5, -14.3, -13.9], np.arange(-13.0, 0.0, 0.8)]))
    pulse = _evidence("PLETH", "pulse")
    pulse = core.ChannelEvidence(**{**pulse.__dict__, "beats_s": steady})
    assert core.fuse(core.VTACH, "realtime", [lead], 0.5, (-16.0, 0.0)).keep_alarm
    assert core.fuse(core.VTACH, "realtime", [lead, pulse], 0.5, (-16.0, 0.0)).verdict == "false"
    # small, fast pulses during the stretch (the run ejecting): no longer steady, the alarm stays
    run = tuple(b for b in steady if not -5.5 < b < -2.5) + tuple(np.arange(-5.2, -2.8, 0.45))
    pulse_run = core.ChannelEvidence(**{**pulse.__dict__, "beats_s": tuple(sorted(run))})
    assert core.fuse(core.VTACH, "realtime", [lead, pulse_run], 0.5, (-16.0, 0.0)).keep_alarm


def _run_of_beats(ii, start_s, n_beats, bpm, shape_of):
    """Lead II with its beats from `start_s` replaced by `n_beats` complexes at `bpm`, the k-th drawn by
    `shape_of(k, t)` (t: s from the complex's centre), on the lead's own baseline."""
    out = ii.copy()
    i0 = int(start_s * RATE)
    n = int((n_beats * 60.0 / bpm + 0.3) * RATE)
    amp = float(np.percentile(ii[:i0], 99.5) - np.median(ii[:i0]))
    t = np.arange(n) / RATE
    seg = np.full(n, np.median(ii[:i0])) + 0.01 * np.random.default_rng(1).standard_normal(n)
    for k in range(n_beats):
        seg += amp * shape_of(k, t - 0.15 - k * 60.0 / bpm)
    out[i0:i0 + n] = seg
    return out


def test_a_run_of_ventricular_beats_repeats_one_shape_noise_does_not():
    """Six fast complexes unlike the patient's beat: one repeated wide shape is a ventricular run (it supports
    the VT); six unrelated shapes at the same times are noise the detector took for beats (no run)."""
    ii = synthesize(seconds=100.0, rate_hz=RATE, seed=5).signals["II"].astype(np.float64)
    g = lambda t, c, w: np.exp(-0.5 * ((t - c) / w) ** 2)  # noqa: E731
    mono = _run_of_beats(ii, ONSET_S - 6.0, 6, 140.0, lambda k, t: -1.5 * g(t, 0.0, 0.035) + 0.8 * g(t, 0.09, 0.04))
    rng = np.random.default_rng(7)
    shapes = [(rng.choice([-1.5, 1.5], 3) * rng.uniform(0.5, 1.0, 3), rng.uniform(-0.06, 0.1, 3),
               rng.uniform(0.008, 0.03, 3)) for _ in range(6)]
    noise = _run_of_beats(ii, ONSET_S - 6.0, 6, 140.0,
                          lambda k, t: sum(a * g(t, c, w) for a, c, w in zip(*shapes[k])))
    v_mono = core.verify_alarm(core.VTACH, {"II": mono}, {"II": RATE}, ONSET_S).channels[0]
    v_noise = core.verify_alarm(core.VTACH, {"II": noise}, {"II": RATE}, ONSET_S).channels[0]
    assert v_mono.abnormal_run >= core.VT_RUN and v_mono.supports == 1.0, v_mono.to_dict()
    # both runs were taken for beats, none shaped like the patient's ("v" unlike it, "." neither)
    assert "vvvvv" in v_mono.beat_shapes, v_mono.beat_shapes
    assert "n" not in v_noise.beat_shapes.rstrip("n")[-8:], v_noise.beat_shapes
    assert v_noise.abnormal_run < 3 and v_noise.supports == 0.0, v_noise.to_dict()


@pytest.mark.parametrize("alarm_type", [core.VTACH, core.TACHY])
def test_all_leads_must_agree_each_as_far_as_its_quality_goes(alarm_type):
    """A degraded lead (half its blocks failing) that mostly agrees must not drag a clean lead's full
    contradiction down to its own weight; a clean lead that dissents still keeps the alarm."""
    clean = _evidence("II", "ecg", contradicts=1.0)
    degraded = core.ChannelEvidence(**{**_evidence("V", "ecg", contradicts=0.8).__dict__, "quality_score": 0.5,
                                       "quality": "degraded"})
    v = core.fuse(alarm_type, "realtime", [clean, degraded], 0.6, (-16.0, 0.0))
    assert v.false_score == pytest.approx(0.9) and v.verdict == "false", v.reason  # 1 - 0.5 x (1 - 0.8)
    dissent = _evidence("V", "ecg", contradicts=0.4)
    assert core.fuse(alarm_type, "realtime", [clean, dissent], 0.6, (-16.0, 0.0)).false_score == pytest.approx(0.4)
    # equal weights: the weakest contradiction, as before; one degraded lead alone: its weighted contradiction
    assert core.fuse(alarm_type, "realtime", [degraded], 0.6, (-16.0, 0.0)).false_score == pytest.approx(0.4)


def test_unusual_beats_inside_a_stretch_a_pulse_shows_is_noise_are_set_aside():
    """The unusual 'beats' inside an unexplained stretch through which the pulse keeps its rhythm are part of that
    noise: they no longer count as a run; the same beats outside the stretch still do."""
    beats = tuple(np.arange(-15.6, 0.0, 0.5))
    inside = "".join("v" if -4.9 <= b <= -3.4 else "n" for b in beats)
    outside = "".join("v" if -11.9 <= b <= -10.4 else "n" for b in beats)
    lead = core.ChannelEvidence(name="II", kind="ecg", quality="good", quality_score=1.0, onset_ok=True, reason="",
                                beats_s=beats, hr_bpm=120.0, max_gap_s=0.6, hr5_min_bpm=115.0, hr5_max_bpm=125.0,
                                hr17_max_bpm=None, abnormal_run=3, contradicts=0.0, supports=0.0, unexplained_s=2.0,
                                unexplained_from_s=-5.0, usual_width_s=0.03, beat_shapes=inside)
    pulse = core.ChannelEvidence(**{**_evidence("PLETH", "pulse").__dict__, "beats_s": tuple(np.arange(-15.8, 0.0, 0.5))})
    assert core.fuse(core.VTACH, "realtime", [lead, pulse], 0.6, (-16.0, 0.0)).false_score == 1.0
    lead_out = core.ChannelEvidence(**{**lead.__dict__, "beat_shapes": outside})
    assert core.fuse(core.VTACH, "realtime", [lead_out, pulse], 0.6, (-16.0, 0.0)).false_score == pytest.approx(0.4)


def test_another_lead_keeping_its_usual_beats_through_a_stretch_shows_it_is_noise():
    """Rhythmic unexplained activity in lead II keeps a VT alarm, unless another usable lead shows beats like
    the patient's usual one at their usual rhythm right through it: a ventricular run shows in every lead."""
    t = np.arange(int(100.0 * RATE)) / RATE
    rng = np.random.default_rng(4)
    base = 0.01 * rng.standard_normal(len(t))
    for b in np.arange(0.5, 100.0, 0.8) + rng.normal(0.0, 0.01, 125):  # sinus at 75 bpm: QRS and T waves
        base += np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.25 * np.exp(-0.5 * ((t - b - 0.25) / 0.05) ** 2)
    run = _wide_run({"II": base}, ONSET_S - 6.0, 3.0, 150.0, np.random.default_rng(6))["II"]
    other = -0.7 * base  # another lead: the same beats, another axis
    alone = core.verify_alarm(core.VTACH, {"II": run}, {"II": RATE}, ONSET_S)
    assert alone.channels[0].unexplained_s >= core.VT_UNEXPLAINED_S[1] and alone.keep_alarm
    both = core.verify_alarm(core.VTACH, {"II": run, "V": other}, {"II": RATE, "V": RATE}, ONSET_S)
    assert both.verdict == "false", [c.to_dict() for c in both.channels]
    # the run in both leads: no lead vouches for the rhythm, the alarm stays
    run_v = _wide_run({"II": other}, ONSET_S - 6.0, 3.0, 150.0, np.random.default_rng(7))["II"]
    assert core.verify_alarm(core.VTACH, {"II": run, "V": run_v}, {"II": RATE, "V": RATE}, ONSET_S).keep_alarm


def test_the_synthesized_ecg_does_not_vote_twice_for_its_pleth():
    """II_SYNTH's beats are PLETH's pulses: in an all-channels vote it does not dissent on its own."""
    chans = [_evidence("II", "ecg", contradicts=1.0), _evidence("PLETH", "pulse", contradicts=1.0),
             _evidence(core.SYNTH, "synth", contradicts=0.0)]
    assert core.fuse(core.TACHY, "realtime", chans, 0.6, (-16.0, 0.0)).false_score == 1.0
    assert core.fuse(core.TACHY, "realtime", chans[:1] + [_evidence("V", "ecg")], 0.6, (-16.0, 0.0)).false_score == 0.0


def _triangles(x, from_s, width_s, amp, period_s, rate_hz=RATE):
    """`x` with a triangle `width_s` wide and `amp` high added every `period_s` from `from_s`: a periodic
    non-cardiac artifact (pacing spikes, electrical interference) that a beat detector takes for beats."""
    out = np.asarray(x, dtype=np.float64).copy()
    w = max(1, int(width_s * rate_hz))
    tri = np.concatenate([np.linspace(0, 1, w // 2 + 1), np.linspace(1, 0, w // 2 + 1)[1:]]) * amp
    for k in range(int(from_s * rate_hz), len(out) - len(tri), int(period_s * rate_hz)):
        out[k:k + len(tri)] += tri
    return out


def test_an_artifact_unlike_the_patients_beat_does_not_refute_asystole_at_any_rate(clean):
    """A true asystole with a slow periodic artifact on lead II (a 150 ms triangle every 1.2 s: 50/min, far below
    a VT rate, so its "beats" never make a run): beats unlike the patient's usual beat are no heartbeat."""
    sig = _stop_heart(clean, ONSET_S - 20.0, np.random.default_rng(0))
    amp = float(np.percentile(clean["II"], 99.5) - np.median(clean["II"]))
    sig["II"] = _triangles(sig["II"], ONSET_S - 15.7, 0.15, amp, 1.2)
    for mode in core.MODES:
        v = core.verify_alarm(core.ASYSTOLE, sig, _rates(sig), ONSET_S, mode=mode, wait_s=5.0)
        ii = v.channels[0]
        assert ii.quality == "good" and ii.max_gap_s < 2.0 and ii.beat_shapes.count("v") > 10, ii.to_dict()
        assert ii.contradicts == 0.0 and v.keep_alarm, (mode, v.reason, ii.to_dict())


def test_a_spike_train_on_ventricular_fibrillation_does_not_refute_it(clean):
    """A true VF (a fast irregular wave, no pulse) with 20 ms spikes every second on lead II (pacing spikes
    continuing through the VF): the lead grades good and shows 60/min "beats", all unlike the usual beat."""
    rng = np.random.default_rng(0)
    sig = _stop_heart(clean, ONSET_S - 20.0, rng)
    i = int((ONSET_S - 20.0) * RATE)
    t = np.arange(len(sig["II"]) - i) / RATE
    sig["II"][i:] += 0.3 * np.sin(2 * np.pi * 4.5 * t + 2 * np.sin(2 * np.pi * 0.3 * t))
    amp = float(np.percentile(clean["II"], 99.5) - np.median(clean["II"]))
    sig["II"] = _triangles(sig["II"], ONSET_S - 15.7, 0.02, 2.0 * amp, 1.0)
    for mode in core.MODES:
        v = core.verify_alarm(core.VFIB, sig, _rates(sig), ONSET_S, mode=mode, wait_s=5.0)
        ii = v.channels[0]
        assert ii.quality == "good" and ii.max_gap_s < 1.5, ii.to_dict()
        assert ii.contradicts == 0.0 and v.keep_alarm, (mode, v.reason, ii.to_dict())


def test_beats_unlike_the_usual_one_or_each_other_are_an_artifact():
    assert not core._is_artifact({1: "n", 2: "n", 3: "v"}, 1.0)
    assert core._is_artifact({1: "n", 2: ".", 3: "v"}, 1.0)  # mostly unlike the usual beat
    assert core._is_artifact({1: "n", 2: "n", 3: "n"}, 0.25)  # each unlike the one before
    assert core._is_artifact({}, 0.0) and not core._is_artifact({}, None)  # no usual beat learnt: each other only
    args = dict(n_beats=12, gap=1.2, hr5=(50.0, 50.0), hr17max=None, abnormal=1, win_len_s=16.0, median_rr=1.2)
    for t in (core.ASYSTOLE, core.VFIB):
        assert core._judge(t, "ecg", **args)[0] == 1.0
        assert core._judge(t, "ecg", **args, artifact=True)[0] == 0.0
        assert core._judge(t, "pulse", **args, artifact=True)[0] == 1.0  # the rule is about ECG shapes


@pytest.mark.parametrize("name, width_s, amp_mv, period_s, from_s", [
    ("f545l", 0.02, 2.0, 1.0, 230.0),  # the review's f545l_ecgspikes: pacing-like spikes through a true VF
    ("a161l", 0.06, 1.0, 1.2, 284.3),  # a true asystole with a 50/min triangle artifact
])
def test_challenge_true_alarms_with_an_artifact_on_lead_ii_are_kept(challenge, name, width_s, amp_mv, period_s, from_s):
    rec = core.read_challenge_record(challenge / name)
    assert rec.label is True
    fs = rec.rates_hz["II"]
    sig = dict(rec.signals)
    sig["II"] = _triangles(sig["II"], from_s, width_s, amp_mv, period_s, fs)
    for mode in core.MODES:
        v = core.verify_alarm(rec.alarm_type, sig, rec.rates_hz, rec.onset_s, mode=mode)
        assert v.keep_alarm, (name, mode, v.reason, next(c for c in v.channels if c.name == "II").to_dict())


def test_alarm_parser_errors_are_bounded():
    """A 200 KB value must not come back in the error text (it goes to the log and a dead letter's header)."""
    for field_ in ("alarm_type", "bed_id", "mode", "onset_ns"):
        with pytest.raises(sa.AlarmMessageError) as err:
            sa.parse_alarm({**GOOD_ALARM, field_: "X" * 200_000})
        assert len(str(err.value)) < 300 and "(200002 characters)" in str(err.value), field_
    with pytest.raises(sa.AlarmMessageError) as err:
        sa.parse_alarm(b"{" + b"x" * 200_000)
    assert len(str(err.value)) < 300


def _fake_worker(**fields):
    """The parts of `stream.agents.WorkerRuntime` the alarm agent uses: every event current, acks recorded in
    `.acked` (offsets)."""
    from types import SimpleNamespace

    from stream.logthrottle import Throttle
    from stream.sinks import ReasonCounters

    acked = []

    async def ack(event, stream=None):
        acked.append(event.message.offset)

    fields.setdefault("log_throttle", Throttle(10.0))
    return SimpleNamespace(counters=ReasonCounters(0.0, None), current=lambda events: list(events),
                           seen=lambda message: None, ack=ack, acked=acked, chunk_listeners=[], **fields)


def test_bad_alarm_log_lines_are_throttled(caplog):
    """20 bad alarms: one WARNING line per WAVEBRIDGE_LOG_REPEAT_S (the next says how many were held back), each
    short; every one still goes to the dead-letter topic."""
    import asyncio
    from types import SimpleNamespace

    from stream.alarm_agent import AlarmRuntime
    from stream.logthrottle import Throttle
    from stream.sinks import ReasonCounters

    now = [0.0]
    sent = []

    async def send(**kwargs):
        sent.append(kwargs)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    rt = _runtime([])
    rt.worker = _fake_worker(dlq_topic=SimpleNamespace(send=send), log_throttle=Throttle(10.0, clock=lambda: now[0]))

    def event(i):
        value = json.dumps({**GOOD_ALARM, "alarm_type": "X" * 200_000, "alarm_id": f"L{i}"}).encode()
        return SimpleNamespace(value=value, message=SimpleNamespace(topic="wavebridge.alarms", partition=0,
                                                                    offset=i, key=b"bed-001"))

    async def feed():
        for i in range(20):
            await rt.on_alarm(event(i))
        now[0] = 11.0
        await rt.on_alarm(event(20))

    with caplog.at_level("WARNING", logger="wavebridge.alarms"):
        asyncio.run(feed())
    lines = [r.getMessage() for r in caplog.records if r.name == "wavebridge.alarms"]
    assert len(lines) == 2 and all(len(m) < 400 for m in lines), [m[:100] for m in lines]
    assert "[19 more of this kind not shown]" in lines[1]
    assert len(sent) == 21
    assert rt.worker.acked == list(range(21))  # each acknowledged once its dead letter is confirmed


def test_alarms_not_keyed_by_bed_id_are_judged_with_a_throttled_warning(caplog):
    """An alarm with no message key, or a key other than its bed_id, may land on a partition away from the bed's
    data (several workers) and come back `uncertain`: it is still judged, and one WARNING line per
    WAVEBRIDGE_LOG_REPEAT_S says so."""
    import asyncio
    from types import SimpleNamespace

    from stream.alarm_agent import AlarmRuntime
    from stream.logthrottle import Throttle
    from stream.sinks import ReasonCounters

    now = [0.0]
    judged = []
    rt = _runtime([])
    rt.judge = SimpleNamespace(submit=lambda alarm, token=None: judged.append(alarm))
    rt.worker = _fake_worker(log_throttle=Throttle(10.0, clock=lambda: now[0]))

    def event(i, key):
        value = json.dumps({**GOOD_ALARM, "alarm_id": f"K{i}"}).encode()
        return SimpleNamespace(value=value, message=SimpleNamespace(topic="wavebridge.alarms", partition=0, offset=i,
                                                                    key=key))

    async def feed():
        await rt.on_alarm(event(0, b"bed-001"))  # keyed right: no line
        await rt.on_alarm(event(1, None))
        await rt.on_alarm(event(2, b"bed-002"))
        await rt.on_alarm(event(3, b""))
        now[0] = 11.0
        await rt.on_alarm(event(4, b"x" * 1000))

    with caplog.at_level("WARNING", logger="wavebridge.alarms"):
        asyncio.run(feed())
    assert [a.alarm_id for a in judged] == ["K0", "K1", "K2", "K3", "K4"]
    lines = [r.getMessage() for r in caplog.records if r.name == "wavebridge.alarms"]
    assert len(lines) == 2, lines
    assert "K1" in lines[0] and "no message key" in lines[0] and "bed_id" in lines[0]
    assert "K4" in lines[1] and "[2 more of this kind not shown]" in lines[1] and len(lines[1]) < 400
    assert sa.key_problem(sa.parse_alarm(GOOD_ALARM), b"bed-001") is None


def _pleth(k, start_ns):
    return wire.Chunk("b1", "PLETH", 125.0, start_ns, k, np.sin(np.arange(125) / 10).astype(np.float32))


def test_one_future_stamped_chunk_neither_unbounds_the_ring_nor_makes_an_alarm_due():
    """One chunk stamped an hour ahead (a monitor clock glitch) must neither stop the ring's pruning (it stays at
    keep_s plus a chunk an hour later) nor make a retrospective alarm due at once by passing for the bed's newest
    data."""
    def ring_with_glitch(n):
        ring = sa.SignalRing(keep_s=120, max_beds=4)
        for k in range(n):
            ring.add(_pleth(k, T0 + (k + (3600 if k == 10 else 0)) * 10**9))
        return ring

    assert ring_with_glitch(3611).samples() <= 121 * 125  # keep_s plus one chunk
    ring = ring_with_glitch(101)  # true data up to T0 + 101 s
    assert ring.newest_ns("b1") == T0 + 101 * 10**9
    judge = sa.AlarmJudge(ring, mode="retrospective", wait_s=30, grace_s=2)
    judge.submit(sa.AlarmMessage("b1", "asystole", T0 + 100 * 10**9, "a1"), now=0.0)
    assert judge.due(now=0.0) == []


def test_a_restart_whose_seq_0_never_reached_the_ring_keeps_its_newest_sample_known():
    """A producer restarts (seq from 0) and its seq-0 chunk is dead-lettered (e.g. nan_flood): the later chunks are
    lower by seq than the last one held, yet newer in time. Once the old newest chunk is pruned, asking for the bed's
    newest sample must neither raise (the alarm tick would crash the worker) nor stay at the old stamp."""
    ring = sa.SignalRing(keep_s=10)
    for k in range(50):
        ring.add(_pleth(k, T0 + k * 10**9))
    for k in range(1, 30):  # seq 0 of the restart never arrives
        ring.add(_pleth(k, T0 + (50 + k) * 10**9))
    assert ring.newest_ns("b1") == T0 + 80 * 10**9


def test_a_step_back_drops_what_the_signal_sent_after_the_new_stamp_and_keeps_the_rest():
    ring = sa.SignalRing(keep_s=120)
    for k in range(10):
        ring.add(_pleth(k, T0 + k * 10**9))
    ring.add(_pleth(10, T0 + 3610 * 10**9))  # the glitch: the history behind it stays
    assert ring.samples() == 11 * 125
    ring.add(_pleth(13, T0 + 13 * 10**9), stepped_back=True)  # the pipeline resynced here
    assert ring.samples() == 11 * 125 and ring.newest_ns("b1") == T0 + 14 * 10**9
    sig, _ = ring.snapshot("b1", T0, T0 + 3611 * 10**9)
    assert np.isfinite(sig["PLETH"][:10 * 125]).all() and np.isfinite(sig["PLETH"][13 * 125:14 * 125]).all()
    assert np.isnan(sig["PLETH"][14 * 125:]).all()


def _runtime(ring_chunks, **settings):
    """An `AlarmRuntime` on a fake app whose verdicts topic records what is sent (confirmed at once)."""
    import asyncio
    from types import SimpleNamespace

    from stream.alarm_agent import AlarmRuntime
    from stream.logthrottle import Throttle
    from stream.sinks import ReasonCounters

    class Topic:
        def __init__(self, name):
            self.name, self.sent = name, []

        async def send(self, key, value, **kwargs):
            self.sent.append(json.loads(value))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    s = SimpleNamespace(**{**dict(alarm_buffer_s=120.0, alarm_max_beds=8, topic_alarms="wavebridge.alarms",
                                  topic_verdicts="wavebridge.verdicts", topic_dlq="wavebridge.dlq",
                                  alarm_translator="none", alarm_mode="realtime", alarm_wait_s=30.0,
                                  alarm_grace_s=2.0), **settings})
    rt = AlarmRuntime(SimpleNamespace(topic=lambda name, **kw: Topic(name)), s, _fake_worker())
    for c in ring_chunks:
        rt.ring.add(c)
    return rt


def _alarm_event(offset, **fields):
    from types import SimpleNamespace

    value = json.dumps({**GOOD_ALARM, **fields}).encode()
    return SimpleNamespace(value=value, message=SimpleNamespace(topic="wavebridge.alarms", partition=0,
                                                                offset=offset, key=b"bed-1"))


def test_stopping_judges_pending_alarms_early_and_says_so(clean, caplog):
    """A retrospective alarm still waiting for its data when the worker stops would wait for the next worker, which
    may never come: a graceful stop judges it with the data at hand, publishes the verdict, marked `judged_early`,
    acknowledges it and logs it. One the consumer hands over after that stays unacknowledged for the next worker."""
    import asyncio

    import jsonschema

    onset = T0 + int(ONSET_S * 1e9)
    rt = _runtime(c for c in _chunks(clean, "bed-1") if c.end_ns() <= onset + int(2e9))
    late = []

    async def run():
        await rt.start()
        await rt.on_alarm(_alarm_event(0, bed_id="bed-1", onset_ns=onset, alarm_id="rt"))
        await rt.on_alarm(_alarm_event(1, bed_id="bed-1", onset_ns=onset, alarm_id="retro", mode="retrospective"))
        await rt.tick()  # the real-time alarm's data is there; the retrospective one waits 30 s after the onset
        assert [m["alarm_id"] for m in rt.verdicts_topic.sent] == ["rt"] and rt.judge.pending == 1
        await rt.stop()
        await rt.tick()  # nothing left, nothing judged twice
        await rt.on_alarm(_alarm_event(2, bed_id="bed-1", onset_ns=onset, alarm_id="after"))
        late.extend(rt.verdicts_topic.sent)

    with caplog.at_level("INFO", logger="wavebridge.alarms"):
        asyncio.run(run())
    on_time, early = late
    assert "judged_early" not in on_time and not on_time["reason"].startswith("judged early")
    assert early["alarm_id"] == "retro" and early["mode"] == "retrospective" and early["judged_early"] == "shutdown"
    assert early["reason"].startswith("judged early (shutdown): ") and early["verdict"] == "false"
    assert early["data_until_ns"] == onset + int(2e9)  # what was at hand, short of the 30 s wait
    schema = _schema("verdict.schema.json")
    for msg in late:
        jsonschema.validate(msg, schema)
    lines = [r.getMessage() for r in caplog.records if r.name == "wavebridge.alarms"]
    assert any("judged 1 pending alarm early" in m and "retro" in m for m in lines), lines
    assert rt.worker.acked == [0, 1]  # each once its verdict was confirmed; the one after the stop is not
    assert any(r.levelname == "WARNING" and "@2 received while stopping: left unacknowledged" in r.getMessage()
               for r in caplog.records), lines


def test_an_alarm_is_acknowledged_only_once_its_verdict_is_confirmed_and_in_offset_order(clean):
    """A crash must not lose an alarm: its offset is acknowledged only after its verdict is confirmed, and a later
    alarm judged first waits behind it (Faust commits only a contiguous prefix). A publish that fails acknowledges
    nothing (the worker crashes and the next one judges both again)."""
    import asyncio

    onset = T0 + int(60 * 1e9)
    chunks = list(_chunks(clean, "bed-1"))
    rt = _runtime(c for c in chunks if c.end_ns() <= onset + int(2e9))

    async def run():
        await rt.start()
        await rt.on_alarm(_alarm_event(0, bed_id="bed-1", onset_ns=onset, alarm_id="retro", mode="retrospective"))
        await rt.on_alarm(_alarm_event(1, bed_id="bed-1", onset_ns=onset, alarm_id="rt"))
        await rt.tick()
        assert [m["alarm_id"] for m in rt.verdicts_topic.sent] == ["rt"]
        assert rt.worker.acked == []  # offset 1 is judged, but 0 is still pending
        for c in chunks:  # the data reach 30 s past the onset: the retrospective alarm is due
            if c.end_ns() > onset + int(2e9):
                rt.ring.add(c)
        await rt.tick()
        assert [m["alarm_id"] for m in rt.verdicts_topic.sent] == ["rt", "retro"]
        assert rt.worker.acked == [0, 1]

        async def refused(key, value, **kwargs):
            raise RuntimeError("broker gone")

        rt.verdicts_topic.send = refused
        await rt.on_alarm(_alarm_event(2, bed_id="bed-1", onset_ns=onset, alarm_id="rt2"))
        with pytest.raises(RuntimeError):
            await rt.tick()
        assert rt.worker.acked == [0, 1] and rt.gate.held() == 1

    asyncio.run(run())


def test_a_revoke_drops_pending_alarms_for_the_partitions_next_owner_and_skips_stale_events(clean, caplog):
    """On a revoke the pending alarms are dropped unjudged and unacknowledged (the partition's owner reads them
    again, with a ring refilled from the input it re-reads); events fetched before the rebalance are skipped."""
    import asyncio

    onset = T0 + int(60 * 1e9)
    rt = _runtime(c for c in _chunks(clean, "bed-1") if c.end_ns() <= onset + int(2e9))
    stale = {3}
    rt.worker.current = lambda events: [e for e in events if e.message.offset not in stale]

    async def run():
        await rt.start()
        await rt.on_alarm(_alarm_event(0, bed_id="bed-1", onset_ns=onset, alarm_id="retro", mode="retrospective"))
        await rt.revoked()
        assert rt.judge.pending == 0 and rt.gate.held() == 0
        await rt.on_alarm(_alarm_event(3, bed_id="bed-1", onset_ns=onset, alarm_id="stale"))  # skipped
        await rt.on_alarm(_alarm_event(0, bed_id="bed-1", onset_ns=onset, alarm_id="rt"))  # read again: no error
        await rt.tick()

    with caplog.at_level("INFO", logger="wavebridge.alarms"):
        asyncio.run(run())
    assert [m["alarm_id"] for m in rt.verdicts_topic.sent] == ["rt"]
    assert rt.worker.acked == [0]
    assert any("1 pending alarm dropped unjudged" in r.getMessage() for r in caplog.records)


def test_a_deeply_nested_alarm_is_a_bad_alarm_not_an_error():
    """100,000 nested '[' make json raise RecursionError: like a chunk (stream.wire), the alarm is malformed."""
    with pytest.raises(sa.AlarmMessageError, match="nesting too deep"):
        sa.parse_alarm(b"[" * 200_000)


def test_a_bad_alarm_whose_partition_was_revoked_meanwhile_is_not_released(clean):
    """A revoke while a bad alarm's dead letter is being sent resets the gate: the alarm must not then be finished
    in it (KeyError, the agent would crash); the partition's owner dead-letters it again."""
    import asyncio

    rt = _runtime([])
    revoked = []

    async def send(**kwargs):
        rt.worker.current = lambda events: []  # the revoke came while the send was on its way
        rt.gate.reset()
        revoked.append(True)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    rt.worker.dlq_topic = __import__("types").SimpleNamespace(send=send)

    async def run():
        await rt.on_alarm(_alarm_event(0, alarm_type="afib"))

    asyncio.run(run())
    assert revoked and rt.worker.acked == [] and rt.gate.held() == 0


def test_a_bad_alarm_whose_dead_letter_fails_raises_and_stays_unacknowledged():
    """The agent crashes the worker on this error (`crash_on_error`): the alarm, still held, is read again after
    the restart, and nothing after it is acknowledged meanwhile."""
    import asyncio
    from types import SimpleNamespace

    rt = _runtime([])

    async def send(**kwargs):
        raise RuntimeError("broker gone")

    rt.worker.dlq_topic = SimpleNamespace(send=send)
    with pytest.raises(RuntimeError, match="broker gone"):
        asyncio.run(rt.on_alarm(_alarm_event(0, alarm_type="afib")))
    assert rt.worker.acked == [] and rt.gate.held() == 1


def _with_gap(signals, from_s, seconds):
    out = {k: v.astype(np.float64).copy() for k, v in signals.items()}
    for x in out.values():
        x[int(from_s * RATE):int((from_s + seconds) * RATE)] = np.nan
    return out


@pytest.mark.parametrize("alarm_type", [core.ASYSTOLE, core.BRADY])
def test_missing_samples_never_support_an_alarm(clean, alarm_type):
    """Samples missing from every channel before the onset (a dropped chunk, data a restarted worker did not read
    again) are no evidence: a regular 72 bpm rhythm with a hole in it must not "show" an asystole or a
    bradycardia (it did: `true`, confidence 0.75, "II (degraded) shows the asystole")."""
    for start, seconds in ((ONSET_S - 16.0, 6.0), (ONSET_S - 10.0, 5.0), (ONSET_S - 8.0, 3.0)):
        v = core.verify_alarm(alarm_type, _with_gap(clean, start, seconds), _rates(clean), ONSET_S)
        assert all(c.supports == 0.0 for c in v.channels), (start, [c.to_dict() for c in v.channels])
        assert v.verdict != "true", (start, v.reason)


def test_a_slow_rhythm_between_gaps_still_supports_a_bradycardia(clean):
    """The observed data still count: 5 beats 2 s apart (30 bpm) between two holes support the bradycardia."""
    ii = 0.02 * np.random.default_rng(5).standard_normal(int(100 * RATE))  # a baseline with noise: not flat
    for t in np.arange(ONSET_S - 11.0, ONSET_S, 2.0):
        i = int(t * RATE)
        ii[i:i + 5] += [0.3, 1.0, 0.3, -0.2, 0.0]
    sig = _with_gap({"II": ii}, ONSET_S - 16.0, 4.5)
    v = core.verify_alarm(core.BRADY, sig, {"II": RATE}, ONSET_S)
    assert v.channels[0].supports > 0.5 and v.keep_alarm, [c.to_dict() for c in v.channels]


@pytest.mark.parametrize("name", ["v275l", "v831l"])
def test_a_gap_does_not_hide_a_true_ventricular_tachycardia(challenge, name):
    """Two true VT alarms were judged `false` once 2 s of every channel went missing 6 s before the onset: the run
    hid in the hole, and the rhythm around it contradicted. A channel with a hole that can hide a beat does not
    contradict a VT (or a tachycardia)."""
    rec = core.read_challenge_record(challenge / name)
    assert rec.label is True and rec.alarm_type == core.VTACH
    sig = {}
    for k, x in rec.signals.items():
        x = np.array(x, dtype=np.float64)
        fs = rec.rates_hz[k]
        x[int((rec.onset_s - 6.0) * fs):int((rec.onset_s - 4.0) * fs)] = np.nan
        sig[k] = x
    assert core.verify_alarm(rec.alarm_type, sig, rec.rates_hz, rec.onset_s).verdict != "false"


def test_missing_pleth_gives_no_synthesized_ecg_evidence(clean):
    """II_SYNTH drawn over a hole in PLETH is invented: NaN there, so it cannot "show" an asystole either (the soak
    found `true`, "II_SYNTH (degraded) shows the asystole", after a worker took over a bed)."""
    from operators.translator import load_translator

    sig = _with_gap(clean, ONSET_S - 16.0, 6.0)
    sig, rates = core.add_synthesized_ecg(sig, _rates(clean), load_translator("classic"), ONSET_S)
    hole = slice(int((ONSET_S - 16.0) * RATE), int((ONSET_S - 10.0) * RATE))
    assert np.isnan(sig[core.SYNTH][hole]).all() and np.isfinite(sig[core.SYNTH][hole.stop:int(ONSET_S * RATE)]).all()
    v = core.verify_alarm(core.ASYSTOLE, sig, rates, ONSET_S)
    assert all(c.supports == 0.0 for c in v.channels) and v.verdict != "true", [c.to_dict() for c in v.channels]


def test_the_worker_counts_and_logs_chunks_a_full_ring_refuses(clean, caplog):
    """The chunks the worker hands the alarm agent go through its listener: a bed the full ring refuses is counted
    (`wavebridge_alarm_ring_refused_chunks`) and logged, once per WAVEBRIDGE_LOG_REPEAT_S, naming the setting."""
    from stream import metrics

    rt = _runtime([], alarm_max_beds=1)
    listen, = rt.worker.chunk_listeners
    before = metrics.ALARM_RING_REFUSED._value.get()
    with caplog.at_level("WARNING", logger="wavebridge.alarms"):
        for bed in ("bed-1", "bed-2"):
            for c in list(_chunks(clean, bed))[:5]:
                listen(c, False)
    assert metrics.ALARM_RING_REFUSED._value.get() - before == 5
    assert rt.ring.beds() == ["bed-1"] and rt.ring.refused("bed-2")
    lines = [r.getMessage() for r in caplog.records if "alarm ring full" in r.getMessage()]
    assert len(lines) == 1 and "bed-2" in lines[0] and "WAVEBRIDGE_ALARM_MAX_BEDS" in lines[0]


def test_a_synthesized_ecg_counts_one_beat_per_pulse():
    """Two detected beats before one PLETH pulse are a beat and a wave taken for one (t469l: a tall synthesized T
    wave 0.22 s after each R doubled II_SYNTH's rate); the one kept has the usual delay to its pulse."""
    rate = 250.0
    r = np.arange(1.0, 15.0, 0.63)
    pulses = ((r + 0.35) * rate).astype(np.int64)
    doubled = np.sort(np.concatenate([r, r[:6] + 0.22]))  # T waves taken for beats in the first seconds
    beats = np.append((doubled * rate).astype(np.int64), int(15.9 * rate))  # and one beat no pulse follows
    kept = core._synth_beats_of_pulses(beats, pulses, rate)
    np.testing.assert_array_equal(kept, (r * rate).astype(np.int64))


def test_the_retrospective_window_reports_only_the_data_there_was(clean):
    """A record that ends at the onset has nothing after it: the verdict said it had looked 10 s further."""
    end = len(clean["II"]) / RATE
    v = core.verify_alarm(core.ASYSTOLE, clean, _rates(clean), end, mode="retrospective", wait_s=30.0)
    assert v.window_s == (-core.PRE_S, 0.0)
    v = core.verify_alarm(core.ASYSTOLE, clean, _rates(clean), end - 4.0, mode="retrospective", wait_s=30.0)
    assert v.window_s == (-core.PRE_S, 4.0)
    v = core.verify_alarm(core.ASYSTOLE, clean, _rates(clean), ONSET_S - 20.0, mode="retrospective", wait_s=30.0)
    assert v.window_s == (-core.PRE_S, core.RETRO_POST_S)


def test_a_flat_stretch_in_a_block_with_missing_samples_still_shows_no_pause(clean, classic):
    """A block that fails for its missing samples may fail for more: PLETH missing for 0.45 s, then flat for 4 s
    (the probe back off) still showed an asystole (PLETH support 0.62) because the block's first-named failure was
    `nonfinite`."""
    sig = {k: v.copy() for k, v in clean.items()}
    i, j, k = (int((ONSET_S - t) * RATE) for t in (12.0, 11.55, 7.3))
    sig["PLETH"][i:j] = np.nan
    sig["PLETH"][j:k] = sig["PLETH"][j - 1 - int(0.5 * RATE)]
    sig, rates = core.add_synthesized_ecg(sig, _rates(sig), classic, ONSET_S)
    for chans in (sig, {k: v for k, v in sig.items() if k != "II"}):
        v = core.verify_alarm(core.ASYSTOLE, chans, {k: rates[k] for k in chans}, ONSET_S)
        assert all(c.supports == 0.0 for c in v.channels), [c.to_dict() for c in v.channels]


def test_the_window_ends_at_the_last_sample_not_at_the_ring_s_nan_padding(clean):
    """The service's ring pads the wait it judged after with NaN: a verdict without data after the onset still said
    it had looked 10 s further."""
    padded = {k: np.concatenate([v[:int(ONSET_S * RATE)], np.full(int(20 * RATE), np.nan)]) for k, v in clean.items()}
    v = core.verify_alarm(core.ASYSTOLE, padded, _rates(padded), ONSET_S, mode="retrospective", wait_s=30.0)
    assert v.window_s == (-core.PRE_S, 0.0)


def test_a_synthesized_ecg_longer_than_its_pleth_is_judged(clean, classic):
    sig, rates = core.add_synthesized_ecg(clean, _rates(clean), classic, ONSET_S)
    sig = {**sig, "PLETH": sig["PLETH"][:int((ONSET_S - 5.0) * RATE)]}  # PLETH ends before the onset
    v = core.verify_alarm(core.ASYSTOLE, sig, rates, ONSET_S)
    assert {c.name for c in v.channels} >= {"II", "PLETH"}
