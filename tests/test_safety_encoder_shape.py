"""Shaping the guard's encoder (fewer layers, a LoRA adapter, int8) on the REAL embedded MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from companion.errors import ModelLoadError
from companion.safety.encoding import (
    guard_encoder,
    lean,
    quantize_encoder,
    truncate_encoder,
)

pytestmark = pytest.mark.slow

TEXTS = [
    "hi",
    "I can't stop thinking about ending it all, every single night, and nobody notices",
    "How many milligrams of sertraline should I take?",
]


@pytest.fixture(scope="module")
def base():
    from companion.models import load_encoder

    return load_encoder()


def _depth(encoder) -> int:
    return len(encoder.model[0].auto_model.encoder.layer)


def test_truncation_keeps_the_first_layers_and_leaves_the_base_alone(base):
    before = base.encode(TEXTS)
    short = truncate_encoder(base, 3)
    assert _depth(short) == 3 and _depth(base) == 6
    assert short.name == f"{base.name}:L3"
    np.testing.assert_allclose(base.encode(TEXTS), before, atol=1e-6)
    emb = lean(short).encode(TEXTS)
    assert emb.shape == before.shape
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb - before).max() > 0.05  # three layers fewer is a different encoder
    for bad in (0, 7):
        with pytest.raises(ModelLoadError, match="encoder_layers"):
            truncate_encoder(base, bad)


def test_int8_encoder_is_close_to_fp32_and_a_text_scores_the_same_in_any_batch(base):
    fp32 = lean(base).encode(TEXTS)
    q = guard_encoder(base, quantization="int8-dynamic")
    assert q.name == f"{base.name}+int8"
    together = q.encode(TEXTS)
    alone = np.stack([q.encode([t])[0] for t in TEXTS])
    # Dynamic quantisation scales activations per forward pass: batched texts would change
    # each other's embeddings. One text per pass makes an embedding a function of its text.
    np.testing.assert_array_equal(together, alone)
    # Close, not equal: per-tensor int8 activations cost MiniLM real fidelity (measured on 102
    # seed texts: cosine to fp32 min 0.81, median 0.94), which is why the shipped guard is
    # fp32 and a quantised guard needs its own head and thresholds.
    cosine = (fp32 * together).sum(axis=1)
    assert cosine.min() > 0.75 and np.median(cosine) > 0.9
    assert np.abs(fp32 - together).max() > 1e-3  # it really runs int8
    kinds = {type(m).__module__ for m in q.model[0].auto_model.modules()}
    assert any("quantized" in k for k in kinds)
    assert not any("quantized" in type(m).__module__ for m in base.model.modules())
    with pytest.raises(ModelLoadError, match="encoder_quantization"):
        guard_encoder(base, quantization="int4")
    assert quantize_encoder(base).name.endswith("+int8")


def test_an_adapter_must_be_loaded_on_the_layers_it_was_trained_on(base, tmp_path):
    from peft import LoraConfig, get_peft_model

    short = truncate_encoder(base, 2)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False
    )
    get_peft_model(short.model[0].auto_model, config).save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(ModelLoadError, match="2-layer encoder"):
        guard_encoder(base, adapter=tmp_path / "adapter")
    tuned = guard_encoder(base, layers=2, adapter=tmp_path / "adapter")
    assert tuned.name.startswith(f"{base.name}:L2+lora:")
    plain = lean(truncate_encoder(base, 2)).encode(TEXTS)
    assert np.abs(tuned.encode(TEXTS) - plain).max() > 1e-3  # the adapter was merged
