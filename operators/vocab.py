"""The project's vocabulary: signal names, output names, tasks, rates, low-rate kinds, topic defaults.

Every layer (operators, models, stream, tools, tests) spells these the same way, so they live in one
module at the bottom of the stack, next to nothing else: plain constants and one name test, no
imports. A value that only one module uses stays in that module.
"""
from __future__ import annotations

__all__ = ["ECG", "PPG", "ABP", "ECG_LEADS", "WIRE_SIGNALS", "SYNTH_SUFFIX", "SR_SUFFIX", "OUTPUT_SUFFIXES", "SYNTH_ECG",
           "is_ecg_signal", "PPG2ECG", "SR", "TASKS", "TASK_PPG2ECG", "TASK_ECG_SR",
           "TASK_PPG_SR", "TASK_MODALITIES", "CANONICAL_RATE_HZ", "SR_TARGET_HZ", "LOW_RATE_HZ", "LOWRES_KINDS", "SEXES",
           "SEX_CODES", "TOPIC_WAVEFORMS", "TOPIC_ECG_SYNTH", "TOPIC_SR", "TOPIC_EVENTS", "TOPIC_DLQ", "TOPIC_ALARMS",
           "TOPIC_VERDICTS", "TOPIC_PROGRESS", "DEFAULT_TOPICS", "DEFAULT_PARTITIONS"]

# --- signals (channel names as monitors send them, WFDB-style) ------------------------------------
ECG = "II"  # lead II: the ECG the model synthesizes and super-resolves
PPG = "PLETH"  # photoplethysmogram (pulse oximeter)
ABP = "ABP"  # arterial blood pressure
# Names an ECG lead goes by in monitors and archives; every other channel is treated as a pulse waveform.
ECG_LEADS = frozenset({"II", "I", "III", "V", "AVR", "AVL", "AVF", "MLII", "MCL", "ECG", "V1", "V2", "V5"})
# Channels the wire format accepts as input (docs/wire-format.md).
WIRE_SIGNALS = frozenset({"II", "I", "III", "V", "AVR", "AVL", "AVF", "PLETH", "RESP", "ABP"})

# --- outputs: a published signal is its source's name with a suffix --------------------------------
SYNTH_SUFFIX = "_SYNTH"  # synthesized from another modality
SR_SUFFIX = "_SR"  # super-resolved copy of the same signal
OUTPUT_SUFFIXES = (SYNTH_SUFFIX, SR_SUFFIX)
SYNTH_ECG = ECG + SYNTH_SUFFIX  # "II_SYNTH": lead II synthesized from PLETH


def is_ecg_signal(name: str) -> bool:
    """Whether a channel name is an ECG lead (the rest, e.g. PLETH, is treated as a pulse waveform)."""
    return name.upper() in ECG_LEADS


def super_resolvable(name: str) -> bool:
    """Whether super-resolution may take channel `name` (as spelled on the wire): an ECG lead or PLETH. The SR
    models, the output's quality judgement and its confidence know those two kinds only; a translator would take a
    RESP or ABP for a PPG and publish a PPG-shaped waveform graded as one."""
    return (is_ecg_signal(name) and name == name.upper()) or name == PPG


# --- tasks -------------------------------------------------------------------------------------------
PPG2ECG = "ppg2ecg"  # PLETH -> lead II ECG
SR = "sr"  # low-rate signal -> the same signal at a higher rate
TASKS = (PPG2ECG, SR)
# The model's task ids (one embedding each) and the (source, target) modality of each.
TASK_PPG2ECG, TASK_ECG_SR, TASK_PPG_SR = 0, 1, 2
TASK_MODALITIES = {TASK_PPG2ECG: ("ppg", "ecg"), TASK_ECG_SR: ("ecg", "ecg"), TASK_PPG_SR: ("ppg", "ppg")}

# --- rates -------------------------------------------------------------------------------------------
CANONICAL_RATE_HZ = 100.0  # the model's internal rate: every input is brought here first
SR_TARGET_HZ = 100.0  # what super-resolution produces unless asked otherwise
LOW_RATE_HZ = 25.0  # the low monitor rate super-resolution is built and evaluated for
# How a low-rate monitor makes its samples from the full-rate signal: "fir" low-passes with a sharp FIR
# (polyphase), "iir" with an 8th-order zero-phase Butterworth at 0.8 x the new Nyquist frequency,
# "plain" keeps every k-th sample (aliasing).
LOWRES_KINDS = ("fir", "plain", "iir")

# --- demographics ------------------------------------------------------------------------------------
SEXES = ("M", "F")
SEX_CODES = {"M": 1, "F": 2}  # the model's sex embedding index; 0 = unknown

# --- Kafka topics (defaults; each is configurable, docs/configuration.md) ---------------------------
TOPIC_WAVEFORMS = "wavebridge.waveforms"  # input chunks from monitors (key = bed id)
TOPIC_ECG_SYNTH = "wavebridge.ecg-synth"  # synthesized lead II (signal "II_SYNTH")
TOPIC_SR = "wavebridge.sr"  # super-resolved signals ("<SIGNAL>_SR")
TOPIC_EVENTS = "wavebridge.events"  # R-peaks, HR, quality, gaps
TOPIC_DLQ = "wavebridge.dlq"  # malformed input with reason
TOPIC_ALARMS = "wavebridge.alarms"  # monitor alarms to verify (key = bed id; as many partitions as waveforms)
TOPIC_VERDICTS = "wavebridge.verdicts"  # alarm verdicts (docs/alarms.md)
TOPIC_PROGRESS = "wavebridge.progress"  # each stream's idle-flush point, for the next owner (stream/progress.py)
DEFAULT_TOPICS = (TOPIC_WAVEFORMS, TOPIC_ECG_SYNTH, TOPIC_SR, TOPIC_EVENTS, TOPIC_DLQ, TOPIC_ALARMS, TOPIC_VERDICTS,
                  TOPIC_PROGRESS)
DEFAULT_PARTITIONS = 4
