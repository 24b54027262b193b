"""Hold the input that only feeds a bed's patient context (or its alarm history) until the commit rule may release it.

A chunk no task routes (a 125 Hz lead II) has nothing to emit, but with the patient context on it decides the
bed's context (`stream.pipeline._BedContexts`). Completed at once, it would be committed ahead of the PLETH of
its time, and a new owner after a rebalance would lack the lead II its context is decided from: its II_SYNTH
would differ from an uninterrupted run's. Likewise, with the alarm agent on, the ring a verdict is judged from is
refilled from the input a new owner re-reads: a bed that sends nothing to translate (lead II at 250 Hz and ABP, its
PLETH probe off) would come back with no history at all (`PipelineConfig.hold_unrouted`). So each such chunk is
held like a stream's input: it is completed once it ends at least `ack_lag_s` + CONTEXT_INPUT_SKEW_S before its
bed's newest context-only input, and at or before where the bed's context still needs input from
(`ContextStore.resume_from_ns`); all of a bed's at once when the bed falls silent for the idle flush, or at the end
of input. Having nothing to publish, it gives its latency
record at once, unless it lies in the re-read head of a resumed PLETH stream (the earlier reader published that).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Collection, Hashable

__all__ = ["CONTEXT_INPUT_SKEW_S", "ContextOnlyInput"]

# Input that only feeds the patient context (a 125 Hz lead II) is held this much longer than `ack_lag_s`, so it is
# never committed before the PLETH of the same time when it arrives up to this much ahead of it: a reader resuming
# at a PLETH chunk then re-reads lead II from there on too.
CONTEXT_INPUT_SKEW_S = 2.0


class _Bed:
    """One bed's held context-only chunks, (end ns, token) in push order, and when its newest one arrived."""

    __slots__ = ("newest_ns", "seen", "held")

    def __init__(self, newest_ns: int) -> None:
        self.newest_ns = newest_ns
        self.seen = 0.0
        self.held: deque = deque()


class ContextOnlyInput:
    """Per bed, the context-only chunks taken and not yet completed, in push order.

    Parameters
    ----------
    ack_lag_s : float
        `PipelineConfig.ack_lag_s` (s); with 0 no skew is added either.
    """

    def __init__(self, ack_lag_s: float) -> None:
        lag_ns = int(round(ack_lag_s * 1e9))
        self._hold_ns = lag_ns + (int(round(CONTEXT_INPUT_SKEW_S * 1e9)) if lag_ns else 0)
        self._beds: dict[str, _Bed] = {}
        self._new: list = []  # (bed, end ns, token) held since the last `emitted`
        self._done: list = []  # released tokens not yet handed out by `completed`

    def __len__(self) -> int:
        """Beds with context-only input held (possibly none of it left) since their last full release."""
        return len(self._beds)

    def hold(self, bed: str, end_ns: int, token: Hashable, now: float) -> None:
        """Take a context-only chunk.

        Parameters
        ----------
        bed : str
            Its bed.
        end_ns : int
            Grid end of its samples, ns.
        token : hashable
            Handed back by `emitted` and, once released, by `completed`.
        now : float
            The pipeline's `clock()` seconds, for `release_idle`.
        """
        b = self._beds.get(bed)
        if b is None:
            b = self._beds[bed] = _Bed(end_ns)
        b.newest_ns = max(end_ns, b.newest_ns)
        b.seen = now
        b.held.append((end_ns, token))
        self._new.append((bed, end_ns, token))

    def emitted(self, taken_until_ns: Callable[[str], int | None]) -> list:
        """Tokens taken since the last call that count as this reader's output (latency records).

        Parameters
        ----------
        taken_until_ns : callable(bed) -> int or None
            End of the bed's resumed PLETH stream's re-read head (ns), None when there is none: chunks ending by
            then were published by the earlier reader.
        """
        new, self._new = self._new, []
        out = []
        for bed, end, token in new:
            taken = taken_until_ns(bed)
            if taken is None or end > taken:
                out.append(token)
        return out

    def release_due(self, needed_from_ns: Callable[[str], int | float], beds: Collection[str] | None = None) -> None:
        """Release each bed's chunks ending `ack_lag_s` + CONTEXT_INPUT_SKEW_S or more before its newest one, and
        at or before `needed_from_ns(bed)` (where its context still needs input from, ns; inf: nowhere).

        Parameters
        ----------
        needed_from_ns : callable(bed) -> int or float
            Where the bed's context still needs input from.
        beds : collection of str, optional
            Only these beds (those whose input or context moved since the last call; default: all).
        """
        for bed in list(self._beds) if beds is None else [b for b in self._beds if b in beds]:  # in push order
            self._release(bed, min(self._beds[bed].newest_ns - self._hold_ns, needed_from_ns(bed)))

    def release_idle(self, now: float, idle_s: float) -> None:
        """Release all of every bed with no context-only input for `idle_s` (its streams are flushed with it)."""
        for bed in [bed for bed, b in self._beds.items() if now - b.seen >= idle_s]:
            self._release(bed)

    def release_all(self) -> None:
        """End of input: release everything."""
        for bed in list(self._beds):
            self._release(bed)

    def _release(self, bed: str, until_ns: int | float | None = None) -> None:
        """Release a bed's chunks ending at or before `until_ns` (None: all of them, and forget the bed)."""
        q = self._beds[bed].held
        while q and (until_ns is None or q[0][0] <= until_ns):
            self._done.append(q.popleft()[1])
        if until_ns is None:
            del self._beds[bed]

    def completed(self) -> list:
        """Tokens released since the last call, in release order (for `BatchResult.completed`)."""
        done, self._done = self._done, []
        return done

    def held(self) -> list:
        """Tokens taken and not yet released, bed by bed in push order."""
        return [t for b in self._beds.values() for _, t in b.held]

    def reset(self) -> list:
        """Forget everything (a rebalance: the input is consumed again); returns the tokens not yet handed out by
        `completed`, held ones first."""
        tokens = self.held() + self._done
        self._beds.clear()
        self._new.clear()
        self._done.clear()
        return tokens
