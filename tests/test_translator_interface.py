"""The translator seam: specs, option filtering, output length contract."""
import numpy as np
import pytest

from operators.translator import PPG2ECG, SR, TranslationRequest, load_translator, output_length


def test_aliases_load_and_service_options_are_dropped_where_not_taken():
    assert load_translator("classic", device="cuda").name == "classic"  # numpy: no device
    assert load_translator("classic", sr_method="cubic").name == "classic-cubic"
    assert load_translator("passthrough", device="cpu").name == "passthrough"
    assert load_translator("operators.baselines:ClassicTranslator").name == "classic"


@pytest.mark.parametrize("spec", ["nope", "operators.baselines:Nope", "no.such.module:X"])
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
