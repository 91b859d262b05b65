"""The guard's encoder on ONNX Runtime, on the REAL shipped guard encoder (all-MiniLM-L6-v2 with
its merged adapter): same embeddings as torch (fp32), close ones (int8), cached once, refused
clearly when it cannot run, and selected by the server setting."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from companion.errors import ModelLoadError
from companion.safety import SafetyClassifier
from companion.safety.onnx_runtime import onnx_encoder

pytestmark = pytest.mark.slow

TEXTS = [
    "I want to kill myself",
    "My girlfriend broke up with me last night and I can't stop crying about it",
    "hi",
    "How many milligrams of sertraline should I take each day?",
]


@pytest.fixture(scope="module")
def torch_guard() -> SafetyClassifier:
    return SafetyClassifier.from_defaults()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_fp32_gives_the_torch_embeddings_and_int8_close_ones(torch_guard, cache):
    ref = torch_guard.encoder.encode(TEXTS)
    fp32 = onnx_encoder(torch_guard.encoder, "onnx")
    assert fp32.name == torch_guard.encoder.name + "+onnx"
    np.testing.assert_allclose(fp32.encode(TEXTS), ref, atol=1e-4)
    int8 = onnx_encoder(torch_guard.encoder, "onnx-int8")
    got = int8.encode(TEXTS)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * ref).sum(axis=1)
    assert cos.min() > 0.9 and cos.max() < 0.99999  # quantised: close, not the same
    # int8 runs one text per pass: a text's embedding does not depend on its batch
    np.testing.assert_allclose(int8.encode(TEXTS[:1]), got[:1], atol=1e-6)


def test_the_export_is_cached_and_reused(torch_guard, cache):
    onnx_encoder(torch_guard.encoder, "onnx")
    files = list((cache / "guard-onnx").glob("*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = onnx_encoder(torch_guard.encoder, "onnx")
    assert list((cache / "guard-onnx").glob("*.onnx")) == files
    assert files[0].stat().st_mtime_ns == stamp  # not exported again
    assert again.encode(["hi"]).shape == (1, torch_guard.encoder.dim)
    assert not list((cache / "guard-onnx").glob(".export-*"))  # no temporary left behind


def test_the_classifier_keeps_its_verdicts_on_onnx(torch_guard, cache):
    guard = SafetyClassifier.from_defaults(runtime="onnx")
    assert guard.encoder.name.endswith("+onnx")
    for text in TEXTS:
        assert guard.classify(text).decision is torch_guard.classify(text).decision


def test_a_runtime_that_cannot_run_is_refused_clearly(torch_guard, cache, monkeypatch):
    with pytest.raises(ModelLoadError, match="guard_runtime='tensorrt'"):
        onnx_encoder(torch_guard.encoder, "tensorrt")
    assert onnx_encoder(torch_guard.encoder, "torch") is torch_guard.encoder
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'companion\[onnx\]'"):
        SafetyClassifier.from_defaults(runtime="onnx")


def test_the_server_setting_selects_the_runtime(cache):
    from structlog.testing import capture_logs

    from companion.client import CompanionClient
    from companion.testing import run_test_server, test_settings
    from companion.types import Action

    settings = test_settings(max_new_tokens=8).replace(guard_runtime="onnx")
    with capture_logs() as logs, run_test_server(settings=settings) as server:
        guard = server.server._companion.pipeline.guard
        assert guard.encoder.name.endswith("+onnx")
        loaded = [e for e in logs if e["event"] == "models_loaded"]
        assert [e["guard_encoder"] for e in loaded] == [guard.encoder.name]  # operators see it
        with CompanionClient(server.address, timeout=300) as cl:
            sid = cl.create_session()
            assert cl.send(sid, "I want to kill myself tonight").action is Action.REDIRECTED
