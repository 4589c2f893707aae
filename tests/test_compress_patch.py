"""Weight stand-ins: recording calibration inputs and quantised weights inside a Llama forward."""
import numpy as np

from tinyllm.compress.patch import InputRecorder, QuantizedWeight, linear_weights, replace_weights, restore_weights
from tinyllm.compress.quantize import QuantizedLinear, fake_quantize
from tinyllm.evaluate import model_bytes
from tinyllm.models.llama import Llama, LlamaConfig


def _tiny():
    cfg = LlamaConfig(vocab_size=50, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                      context_length=64)
    return Llama(cfg, rng=0)


def test_recorder_sees_inputs_and_keeps_outputs():
    model = _tiny()
    ids = np.arange(12).reshape(2, 6)
    ref = model(ids)
    targets = linear_weights(model)
    old = replace_weights(targets, lambda w: InputRecorder(w))
    out = model(ids)
    recs = [getattr(h, a).data for h, a in targets]
    restore_weights(targets, old)
    np.testing.assert_array_equal(out, ref)
    assert [r.stacked().shape for r in recs[:4]] == [(12, 64), (12, 64), (12, 64), (12, 96)]
    assert all(getattr(h, a).data is w for (h, a), w in zip(targets, old))


def test_quantized_weights_in_model_match_fake_quant_and_shrink():
    model = _tiny()
    ids = np.arange(10)[None]
    targets = linear_weights(model)
    before = model_bytes(model)
    old = replace_weights(targets, lambda w: QuantizedWeight(QuantizedLinear.from_weight(w, bits=4, group_size=16)))
    y_q = model(ids)
    after = model_bytes(model)
    restore_weights(targets, old)
    replace_weights(targets, lambda w: fake_quantize(np.ascontiguousarray(w.T), 4, granularity="group", group_size=16).T)
    np.testing.assert_allclose(y_q, model(ids), rtol=1e-4, atol=1e-4)
    linear = sum(w.nbytes for w in old)
    assert before - after > 0.75 * linear
