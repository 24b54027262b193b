"""The demo's picture: input vs. output on true timestamps, with each output's quality and confidence."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from operators.vocab import ECG, PPG, SR_SUFFIX, SYNTH_ECG


def _series(table, bed: str, signal: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    sel = table.filter(pc.and_(pc.equal(table["bed"], bed), pc.equal(table["signal"], signal)))
    t = sel["time"].cast("int64").to_numpy()
    return t, sel["value"].to_numpy()


def plot(paths: dict[str, Path], out_png: Path, main_bed: str | None, sr_bed: str | None, sr_input_hz: float,
         view_s: float = 8.0, probe_off: tuple[str, list[int]] | None = None) -> None:
    """Input vs output: PPG → synthesized ECG (with the real ECG for reference), and a low-rate input → SR (with
    the classic baseline and, from `main_bed`, the full-rate signal for reference).

    Parameters
    ----------
    paths : dict of str to Path
        The Parquet files of `stream.tools.tables.write_parquet` ("input", "synth", "sr", optionally "events").
    out_png : Path
        The PNG written.
    main_bed, sr_bed : str or None
        The bed whose PPG -> ECG is shown, and the one whose super-resolution is; None leaves its panel empty.
    sr_input_hz : float
        Rate of the super-resolved bed's input, in Hz (for the labels).
    view_s : float
        Seconds of signal shown, from the middle of the output.
    probe_off : (str, [int, int]), optional
        A bed whose PPG probe came off, and the span (ns) it was off: a last panel shows its PPG and synthesized ECG
        around the span's start, and what was withheld.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    inp, syn, sr = (pq.read_table(paths[k]) for k in ("input", "synth", "sr"))
    events = pq.read_table(paths["events"]).to_pandas() if "events" in paths and Path(paths["events"]).exists() else None
    rows = [1, 1, 1, 0.6] + ([1.1] if probe_off else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(13, 2.6 * sum(rows) + 0.6), constrained_layout=True,
                             gridspec_kw={"height_ratios": rows})
    if probe_off:
        _plot_probe_off(axes[-1], inp, syn, events, *probe_off, view_s)
        axes = axes[:-1]
    fig.suptitle("wavebridge demo: input vs. output (true timestamps)", fontsize=13)
    t0, twin_lines = _plot_ppg2ecg(axes[0], axes[1], inp, syn, main_bed, view_s) if main_bed else (None, [])
    sr_signal = None
    if sr_bed:
        t0, sr_signal = _plot_sr(axes[2], inp, sr, sr_bed, t0, view_s, sr_input_hz, ref_bed=main_bed)
    if t0 is not None:
        _plot_quality(axes, t0, view_s, [(syn, main_bed, SYNTH_ECG, "tab:red", 1),
                                         (sr, sr_bed, sr_signal, "tab:green", 2)], events)
    _finish_axes(axes, twin_lines)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _middle(t_ns: np.ndarray, view_s: float) -> tuple[float, float]:
    """(start, end) in s of a `view_s` stretch in the middle of the output, where every window has its full
    context."""
    mid = t_ns[len(t_ns) // 2] / 1e9
    return mid - view_s / 2, mid + view_s / 2


def _plot_ppg2ecg(ax_in, ax_out, inp, syn, bed: str, view_s: float) -> tuple[float | None, list]:
    """Top panels: the bed's PPG, and its synthesized ECG over the measured one. Returns (the stretch's start in s,
    None without output; the measured ECG's lines, for the legend)."""
    ts, ys = _series(syn, bed, SYNTH_ECG)
    tp, yp = _series(inp, bed, "PLETH")
    te, ye = _series(inp, bed, "II")
    if not len(ts):
        return None, []
    lo, hi = _middle(ts, view_s)
    t0 = lo
    twin_lines: list = []
    for ax, (t, y, label, color) in zip((ax_in, ax_out), [(tp, yp, "input PLETH (PPG)", "tab:blue"),
                                                          (ts, ys, "output II_SYNTH (synthesized ECG)", "tab:red")]):
        m = (t / 1e9 >= lo) & (t / 1e9 < hi)
        ax.plot(t[m] / 1e9 - t0, y[m], color=color, lw=1.2, label=label)
    m = (te / 1e9 >= lo) & (te / 1e9 < hi)
    if m.any():
        # The real lead II on a twin axis: both are in mV, but the synthesized lead's baseline and amplitude follow
        # its context beat, not this moment's lead, and a shared axis would flatten one of the two shapes.
        ax2 = ax_out.twinx()
        ax2.plot(te[m] / 1e9 - t0, ye[m], color="0.55", lw=0.9, alpha=0.8, label="measured II (reference)")
        ax2.set_ylabel("measured II (mV)")
        ax2.set_zorder(ax_out.get_zorder() - 1)  # keep the output trace on top
        ax_out.patch.set_visible(False)
        twin_lines = ax2.lines
    ax_in.set_title(f"{bed}: PPG in", loc="left", fontsize=10)
    ax_in.set_ylabel("PLETH (monitor units)")
    ax_out.set_ylabel("II_SYNTH (mV)")
    # short titles: the legends sit above the right half of each panel
    ax_out.set_title(f"{bed}: II_SYNTH from the PPG, not a diagnostic lead", loc="left", fontsize=10)
    return t0, twin_lines


def _plot_sr(ax, inp, sr, bed: str, t0: float | None, view_s: float, sr_input_hz: float,
             ref_bed: str | None = None) -> tuple[float | None, str | None]:
    """Third panel: the bed's super-resolved output over its low-rate input samples, on the same stretch as the
    panels above (or the middle of its own output). Lead II when the bed sent it (the model's work; PLETH from 16 Hz
    is a polyphase resample), with the polyphase resample of the same input (the classic baseline) and `ref_bed`'s
    full-rate signal (the same recording at its own rate) for reference. Returns (the stretch's start in s, the
    output signal shown)."""
    from operators.processing.resample import resample

    sig = next((s for s in (ECG + SR_SUFFIX, PPG + SR_SUFFIX) if len(_series(sr, bed, s)[0])), None)
    if not sig:
        return t0, None
    base = sig[: -len(SR_SUFFIX)]
    tr, yr = _series(sr, bed, sig)
    tl, yl = _series(inp, bed, base)
    lo, hi = (t0, t0 + view_s) if t0 is not None else _middle(tr, view_s)
    t0 = lo if t0 is None else t0
    rate_out = round(1e9 / float(np.median(np.diff(tr)))) if len(tr) > 1 else 0
    m = (tl / 1e9 >= lo - 1.0) & (tl / 1e9 < hi + 1.0)  # a second each side: the resampler's edges off the view
    if rate_out and m.sum() > 8:
        yp = resample(yl[m], sr_input_hz, rate_out, method="polyphase")
        tp = tl[m][0] + np.arange(len(yp)) * (1e9 / rate_out)
        k = (tp / 1e9 >= lo) & (tp / 1e9 < hi)
        ax.plot(tp[k] / 1e9 - t0, yp[k], color="tab:orange", lw=1.0, ls="--", label="polyphase (classic baseline)")
    if ref_bed:
        te, ye = _series(inp, ref_bed, base)
        k = (te / 1e9 >= lo) & (te / 1e9 < hi)
        if k.any():
            ax.plot(te[k] / 1e9 - t0, ye[k], color="0.55", lw=0.9, alpha=0.8, label=f"measured {base} (reference)")
    k = (tr / 1e9 >= lo) & (tr / 1e9 < hi)
    ax.plot(tr[k] / 1e9 - t0, yr[k], color="tab:green", lw=1.2, label=f"output {sig} ({rate_out:g} Hz)")
    m = (tl / 1e9 >= lo) & (tl / 1e9 < hi)
    ax.plot(tl[m] / 1e9 - t0, yl[m], "o", color="black", ms=3.5, label=f"input {base} ({sr_input_hz:g} Hz)")
    ax.set_title(f"{bed}: {base} from a {sr_input_hz:g} Hz monitor, super-resolved", loc="left", fontsize=10)
    ax.set_ylabel(f"{base} (mV)" if base == ECG else f"{base} (monitor units)")
    return t0, sig


def _plot_probe_off(ax, inp, syn, events, bed: str, span_ns: list[int], view_s: float) -> None:
    """Last panel: the probe-off bed's PPG (left axis) and synthesized ECG (right axis) from a third of the view
    before the probe came off; the withheld spans shaded with their reason."""
    tp, yp = _series(inp, bed, "PLETH")
    ts, ys = _series(syn, bed, SYNTH_ECG)
    lo = span_ns[0] / 1e9 - view_s / 3
    hi = lo + view_s
    m = (tp / 1e9 >= lo) & (tp / 1e9 < hi)
    ax.plot(tp[m] / 1e9 - lo, yp[m], color="tab:blue", lw=1.2, label="input PLETH (probe comes off)")
    ax2 = ax.twinx()
    k = (ts / 1e9 >= lo) & (ts / 1e9 < hi)
    # NaN where no sample was published, so the line stops instead of bridging the withheld span
    t_out, y_out = ts[k] / 1e9 - lo, ys[k].astype(float)
    if len(t_out) > 1:
        gap = np.flatnonzero(np.diff(t_out) > 1.5 * np.median(np.diff(t_out)))
        t_out, y_out = np.insert(t_out, gap + 1, np.nan), np.insert(y_out, gap + 1, np.nan)
    ax2.plot(t_out, y_out, color="tab:red", lw=1.0, label="output II_SYNTH")
    ax2.set_ylabel("II_SYNTH (mV)")
    ax.set_ylabel("PLETH (monitor units)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    reasons: set[str] = set()
    for a, b, why in _withheld_spans(events, bed, SYNTH_ECG):
        if b > lo and a < hi:
            ax.axvspan(max(a, lo) - lo, min(b, hi) - lo, color="0.85", zorder=0)
            reasons.update(why)
    if reasons:
        # The shading can start before the flat line: a window that judges the PPG unusable withholds its whole
        # emitted span (one hop), not just the flat part of it.
        ax.text(span_ns[0] / 1e9 - lo + 0.1, 0.95, f"withheld: {', '.join(sorted(reasons))}; no II_SYNTH, no beats\n"
                "(whole output spans: from the first one whose window saw the flat PPG)",
                transform=ax.get_xaxis_transform(), fontsize=9, va="top")
    ax.set_title(f"{bed}: the PPG probe comes off; the service withholds the span instead of drawing a flat ECG",
                 loc="left", fontsize=10)
    ax.legend(handles=ax.lines + ax2.lines, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=9,
              frameon=False, borderaxespad=0.2)
    ax.grid(alpha=0.3)
    ax.set_xlabel(f"time (s); the probe comes off at {view_s / 3:.1f} s")


def _withheld_spans(events, bed: str, out_signal: str) -> list[tuple[float, float, list[str]]]:
    """[(start s, end s, reasons)] withheld from `bed`'s `out_signal`: the `source_unusable` / `output_unusable`
    events that name it among their outputs, spans that touch or overlap merged (one label each)."""
    import json

    if events is None or not len(events) or not out_signal:
        return []
    rows = events[(events["bed"] == bed) & events["type"].isin(["source_unusable", "output_unusable"])]
    return merge_spans((ev["time"].value / 1e9, ev["end"].value / 1e9, ev["reason"]) for _, ev in rows.iterrows()
                       if out_signal in (json.loads(ev["json"]).get("outputs") or []))


def merge_spans(spans) -> list[tuple]:
    """`(start, end, reason)` spans -> `(start, end, sorted reasons)`, those that touch or overlap merged, by start."""
    merged: list[list] = []
    for a, b, why in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
            merged[-1][2].add(why)
        else:
            merged.append([a, b, {why}])
    return [(a, b, sorted(w)) for a, b, w in merged]


def _finish_axes(axes, twin_lines: list) -> None:
    """Legends above each panel (the ECG panel's with the measured ECG), grids, and a note on empty panels."""
    for i, ax in enumerate(axes):
        if ax.lines:
            handles = ax.lines + (twin_lines if i == 1 else [])
            # Above the axes, right-aligned: never on top of the traces; titles sit on the left.
            ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
                      fontsize=9, frameon=False, borderaxespad=0.2)
        else:
            ax.text(0.5, 0.5, "no output collected", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s) from the start of the plotted stretch")


def _plot_quality(axes, t0: float, view_s: float, outputs: list, events) -> None:
    """Bottom panel: each output's quality score and confidence over the plotted stretch; spans withheld for an
    unusable source shaded (with the reason) on the output's panel and here."""
    import pyarrow.compute as pc

    qax = axes[-1]
    lo, hi = t0, t0 + view_s
    shaded = False
    for table, bed, sig, color, row in outputs:
        if not bed or not sig:
            continue
        sel = table.filter(pc.and_(pc.equal(table["bed"], bed), pc.equal(table["signal"], sig)))
        t = sel["time"].cast("int64").to_numpy() / 1e9
        m = (t >= lo) & (t < hi)
        if m.any():
            qax.plot(t[m] - t0, sel["quality"].to_numpy(zero_copy_only=False)[m], color=color, lw=1.5,
                     label=f"{bed} {sig} quality")
            qax.plot(t[m] - t0, sel["confidence"].to_numpy(zero_copy_only=False)[m], color=color, lw=1.0, ls="--",
                     label=f"{sig} confidence")
        for a, b, reasons in _withheld_spans(events, bed, sig):
            if b > lo and a < hi:
                shaded = True
                for ax in (axes[row], qax):
                    ax.axvspan(max(a, lo) - t0, min(b, hi) - t0, color="0.85", zorder=0)
                axes[row].text(max(a, lo) - t0, 0.95, f"withheld: {', '.join(reasons)}",
                               transform=axes[row].get_xaxis_transform(), fontsize=8, va="top")
    qax.set_ylim(-0.05, 1.05)
    qax.set_ylabel("0-1")
    qax.set_title("quality, confidence" + ("; grey: withheld" if shaded else ""), loc="left", fontsize=10)
    qax.text(0.01, 0.5, "quality: of the window's source and output; confidence: the probability its output is right "
             "(docs/quality.md)", transform=qax.transAxes, fontsize=8, va="center", color="0.3")
