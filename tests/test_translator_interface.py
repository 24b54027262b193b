"""The translator seam: specs, option filtering, output length contract."""
import numpy as np
import pytest

from operators.translator import PPG2ECG, SR, TranslationRequest, load_translator, output_length


def test_aliases_load_and_service_options_are_dropped_where_not_taken():
    assert load_translator("classic", device="cuda").name == "classic"  # numpy: no device
    assert load_translator("classic", sr_method="cubic").name == "classic-cubic"
    assert load_translator("passthrough", device="cpu").name == "passthrough"
    assert load_translator("operators.classic:ClassicTranslator").name == "classic"


@pytest.mark.parametrize("spec", ["nope", "operators.classic:Nope", "no.such.module:X"])
def test_bad_specs_fail_with_a_clear_error(spec):
    with pytest.raises(ValueError, match="translator"):
        load_translator(spec)


@pytest.mark.parametrize("spec", ["classic", "passthrough"])
def test_output_covers_the_window_at_the_target_rate(spec):
    tr = load_translator(spec)
    x = np.sin(np.linspace(0, 20, 1000)).astype(np.float32)
    reqs = [TranslationRequest(SR, x[::5], 25.0, 100.0, "II"), TranslationRequest(PPG2ECG, x, 125.0, 125.0, "PLETH"),
            TranslationRequest(SR, x[:333], 62.5, 100.0, "PLETH")]
    outs = tr.translate(reqs)
    assert [len(o) for o in outs] == [r.n_out for r in reqs] == [800, 1000, output_length(333, 62.5, 100.0)]
    assert all(np.all(np.isfinite(o)) for o in outs)


class _Tagged:
    """Fake translator that marks its outputs with a constant, to see who served which request."""

    def __init__(self, name, mark):
        self.name, self.mark, self.batches = name, mark, []

    def translate(self, requests):
        self.batches.append(len(requests))
        return [np.full(r.n_out, self.mark, np.float32) for r in requests]


def test_per_task_spec_routes_each_task_to_its_translator_in_one_call_each():
    from operators.translator import TaskRouter

    a, b = _Tagged("a", 1.0), _Tagged("b", 2.0)
    router = TaskRouter({PPG2ECG: a, SR: b})
    x = np.zeros(250, np.float32)
    reqs = [TranslationRequest(SR, x[::5], 25.0, 100.0, "II"), TranslationRequest(PPG2ECG, x, 125.0, 125.0),
            TranslationRequest(SR, x[::5], 25.0, 100.0, "PLETH"), TranslationRequest(PPG2ECG, x, 125.0, 125.0)]
    outs = router.translate(reqs)
    assert [float(o[0]) for o in outs] == [2.0, 1.0, 2.0, 1.0] and [len(o) for o in outs] == [r.n_out for r in reqs]
    assert a.batches == [2] and b.batches == [2]  # one batched call per translator, not one per request
    assert (router.name, router.name_for(PPG2ECG), router.name_for(SR)) == ("ppg2ecg=a,sr=b", "a", "b")


def test_per_task_spec_loads_from_one_string_and_refuses_incomplete_ones():
    tr = load_translator("ppg2ecg=classic, sr=passthrough", device="cpu")
    assert (tr.name_for(PPG2ECG), tr.name_for(SR)) == ("classic", "passthrough")
    same = load_translator("ppg2ecg=classic,sr=classic")
    assert same.by_task[PPG2ECG] is same.by_task[SR]  # one instance (one weights load) per distinct spec
    for bad in ("ppg2ecg=classic", "ppg2ecg=classic,sr=", "ecg=classic,sr=clmt", "ppg2ecg=classic,ppg2ecg=clmt,sr=clmt"):
        with pytest.raises(ValueError, match="translator spec"):
            load_translator(bad)
