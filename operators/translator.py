"""The translator interface: the one seam between the stream and any model.

`stream/` only ever talks to a `Translator`; `models/` (CLMT) and `operators/classic.py`
(classic methods) implement it. A translator is chosen by a spec string, so a new model plugs in
by configuration (`WAVEBRIDGE_TRANSLATOR=models.engine:ClmtTranslator`) without touching `stream/`.

Everything here is plain numpy: no torch, no Kafka.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

# The tasks a translator may serve and which channels are ECG belong to the vocabulary; the seam
# re-exports them because every request names one.
from operators.vocab import PPG2ECG, SR, TASKS, is_ecg_signal  # noqa: F401

__all__ = ["DEFAULT_SPEC", "PairedContext",
           "TranslationRequest", "output_length", "Translator", "TaskRouter", "method_of", "parse_spec", "check_spec",
           "load_translator"]

# The translator each task gets unless configured: per task the one that measures best on the held-out records
# (`wavebridge evaluate`, models/weights/MODEL_CARD.md "Which translator serves which task"). The classic
# template is the better PPG->ECG on both datasets; CLMT is kept for super-resolution.
DEFAULT_SPEC = "ppg2ecg=classic,sr=clmt"


@dataclass(frozen=True)
class PairedContext:
    """Earlier, simultaneous ECG + PPG of the same patient (both at `rate_hz`, same length)."""

    ecg: np.ndarray
    ppg: np.ndarray
    rate_hz: float


@dataclass(frozen=True)
class TranslationRequest:
    """One window to translate.

    `source` is the window at `source_rate` (already gap-free: the stream never splices across a
    gap). The result must cover the same time span at `target_rate`, i.e. have
    `round(len(source) * target_rate / source_rate)` samples, sample 0 at the window's start.
    """

    task: str
    source: np.ndarray
    source_rate: float
    target_rate: float
    source_signal: str = "PLETH"  # e.g. "PLETH", "II"
    age: float | None = None
    sex: str | None = None  # "M" / "F" / None
    context: PairedContext | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def n_out(self) -> int:
        """Samples the translator must return (`output_length` of the source)."""
        return output_length(len(self.source), self.source_rate, self.target_rate)

    @property
    def bed(self):
        """The bed this window belongs to (`meta["bed"]`, set by the stream pipeline): the slot a translator caches
        its values of this bed's context in. None without one (then keyed by the context object alone)."""
        return self.meta.get("bed") if self.meta else None


def output_length(n_in: int, source_rate: float, target_rate: float) -> int:
    """Samples an output has: `round(n_in * target_rate / source_rate)` (the rule `resample` follows).

    Parameters
    ----------
    n_in : source samples.
    source_rate, target_rate : rates (Hz, > 0).
    """
    return int(round(n_in * float(target_rate) / float(source_rate)))


@runtime_checkable
class Translator(Protocol):
    """Batched translation. Implementations must be safe to call from a worker thread.

    Optionally, `method_for(request) -> str | None` names what produced a request's output when it was not the
    translator's own method (e.g. a model that passes a source it cannot improve on to a plain resampler); the
    stream tags that output with it instead of `name` (`method_of`)."""

    name: str

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        """Translate a batch (windows of many beds) in one call.

        Parameters
        ----------
        requests : windows of any beds and tasks this translator serves.

        Returns
        -------
        One float32 array of exactly `request.n_out` samples per request, in request order.
        """
        ...


def method_of(translator, request: TranslationRequest, default: str | None) -> str | None:
    """What produced `request`'s output: `translator.method_for(request)` where it says, else `default` (its name).

    Parameters
    ----------
    translator : a `Translator`, with or without `method_for` (None: has none).
    request : the request it translated.
    default : the name to use otherwise.
    """
    fn = getattr(translator, "method_for", None)
    return (fn(request) if fn is not None else None) or default


class TaskRouter:
    """One translator per task behind the one interface: each batch is split by task, every part goes to its
    translator in one call, results come back in request order. `name_for(task)` is the model that made an
    output (the stream tags InfluxDB points with it)."""

    def __init__(self, by_task: dict[str, Translator]):
        unknown = set(by_task) - set(TASKS)
        if unknown or not by_task:
            raise ValueError(f"per-task translators for {sorted(unknown) or 'no task'}; tasks are {', '.join(TASKS)}")
        self.by_task = dict(by_task)
        self.name = ",".join(f"{t}={self.name_for(t)}" for t in TASKS if t in self.by_task)

    def method_for(self, request: TranslationRequest) -> str | None:
        """The serving translator's `method_for(request)`, None where it has none (its `name` applies)."""
        return method_of(self.by_task.get(request.task), request, None)

    def name_for(self, task: str) -> str:
        """Name of the translator serving `task` ("" if none): the `name` attribute, else the class name."""
        tr = self.by_task.get(task)
        return "" if tr is None else getattr(tr, "name", type(tr).__name__)

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        """`Translator.translate`; raises ValueError for a task no translator serves."""
        out: list = [None] * len(requests)
        for task in {r.task for r in requests}:
            if task not in self.by_task:
                raise ValueError(f"no translator configured for task {task!r}")
            idx = [i for i, r in enumerate(requests) if r.task == task]
            for i, y in zip(idx, self.by_task[task].translate([requests[i] for i in idx])):
                out[i] = y
        return out


def parse_spec(spec: str) -> dict[str, str] | str:
    """`clmt` -> "clmt"; `ppg2ecg=classic,sr=clmt` -> {"ppg2ecg": "classic", "sr": "clmt"}.

    Parameters
    ----------
    spec : one translator for every task, or `task=translator` pairs that name every task once.

    Raises
    ------
    ValueError : an unknown, repeated or missing task, or an empty translator.
    """
    if "=" not in spec:
        return spec.strip()
    by_task = {}
    for part in spec.split(","):
        task, _, one = (x.strip() for x in part.partition("="))
        if task not in TASKS or not one or task in by_task:
            raise ValueError(f"translator spec {spec!r}: expected TASK=SPEC for each of {', '.join(TASKS)}, "
                             f"e.g. ppg2ecg=classic,sr=clmt")
        by_task[task] = one
    if set(by_task) != set(TASKS):
        raise ValueError(f"translator spec {spec!r} names no translator for {', '.join(sorted(set(TASKS) - set(by_task)))}")
    return by_task


ALIASES = {
    "classic": "operators.classic:ClassicTranslator",
    "clmt": "models.engine:ClmtTranslator",
    "passthrough": "operators.classic:PassthroughTranslator",  # translation disabled (benchmark ceiling)
}


def check_spec(spec: str) -> None:
    """Raise ValueError unless every translator the spec names is an alias or `module:Class` (nothing is imported).

    Parameters
    ----------
    spec : as `load_translator` takes it.
    """
    parsed = parse_spec(spec)
    for one in (parsed.values() if isinstance(parsed, dict) else [parsed]):
        _resolve(one)


def _resolve(one: str) -> tuple[str, str]:
    target = ALIASES.get(one, one)
    mod_name, _, cls_name = target.partition(":")
    if not (mod_name.strip() and cls_name.strip()) or not all(p.isidentifier() for p in mod_name.split(".")) \
            or not cls_name.isidentifier():
        raise ValueError(f"translator spec {one!r} is not an alias ({', '.join(ALIASES)}) nor 'module:Class'")
    return mod_name, cls_name


def load_translator(spec: str, **kwargs) -> Translator:
    """Build a translator from `module:Class` (or a short alias) with keyword options, or one per task
    (`ppg2ecg=classic,sr=clmt`, a `TaskRouter`; tasks sharing a spec share one instance).

    Options the class's constructor does not take are dropped, so service-wide settings such as
    `device` can be passed to any translator (the numpy ones have no device).

    Parameters
    ----------
    spec : "classic", "clmt", "passthrough", "module:Class", or `task=...` pairs (`parse_spec`).
    **kwargs : constructor options (e.g. `device`).

    Raises
    ------
    ValueError : a malformed spec, or a module or class that cannot be imported.
    """
    parsed = parse_spec(spec)
    if isinstance(parsed, dict):
        built = {one: load_translator(one, **kwargs) for one in set(parsed.values())}
        return TaskRouter({task: built[one] for task, one in parsed.items()})
    mod_name, cls_name = _resolve(parsed)
    spec = f"{mod_name}:{cls_name}"
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load translator {spec!r}: {exc}") from exc
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(**kwargs)
