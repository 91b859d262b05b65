"""The safety classifier with fakes: normalisation, head, policy, artifact, context, priority."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from companion import ModelLoadError
from companion.safety import (
    ClassifyItem,
    LinearHead,
    Policy,
    SafetyClassifier,
    encoder_adapter_dir,
    encoder_inputs,
    load_artifact,
    normalize,
    save_artifact,
    window_text,
)
from companion.safety.artifact import cross_dir
from companion.safety.encoding import adapter_digest
from companion.types import Category, Direction, Role

THRESHOLDS = {"user": {"crisis": 0.5, "medical": 0.5}, "assistant": {"crisis": 0.4, "medical": 0.6}}
VOCAB = ("die", "pills", "dose", "bridge", "parked")


class FakeEncoder:
    """Bag-of-words over a tiny vocabulary; records what it was asked to encode."""

    name = "fake-bow"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.array([[float(w in t.lower()) for w in VOCAB] for t in texts], dtype=np.float32)
        return out


def _policy(**kw) -> Policy:
    return Policy(policy_version="test-1", thresholds=THRESHOLDS, encoder="fake-bow", **kw)


def _head() -> LinearHead:
    d = len(VOCAB)
    # user features: [newest (d), window (d)]; crisis from "die" in the newest message or
    # "bridge" and "parked" together in the window; medical from "pills" or "dose".
    w_user = np.zeros((2 * d, 2), dtype=np.float32)
    w_user[0, 0] = 10  # die (newest)
    w_user[d + 3, 0] = 3  # bridge (window)
    w_user[d + 4, 0] = 3  # parked (window)
    w_user[d + 0, 0] = 6  # die (window)
    w_user[1, 1] = w_user[2, 1] = 10
    w_asst = np.zeros((d, 2), dtype=np.float32)
    w_asst[0, 0] = 10
    w_asst[2, 1] = 10
    bias = np.array([-5, -5], dtype=np.float32)
    return LinearHead({Role.USER: (w_user, bias), Role.ASSISTANT: (w_asst, bias)})


@pytest.fixture
def clf() -> SafetyClassifier:
    return SafetyClassifier(FakeEncoder(), _head(), _policy())


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("i w4nt to k1ll mys3lf", "i want to kill myself"),
        ("su1c1de", "suicide"),
        ("0verdose tonight", "overdose tonight"),
        ("k i l l  m y s e l f", "kill myself"),
        ("k.i.l.l myself", "kill myself"),
        ("I want to diiiiie", "I want to die"),
        ("so tiiired, killlll me", "so tired, kill me"),
        ("took all my 💊💊 🥀", "took all my pills pills"),
        ("\uff4b\uff49\uff4c\uff4c myself", "kill myself"),
        ("kill\u200bmyself", "killmyself"),
    ],
)
def test_normalize_undoes_obfuscation(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "text", ["take 50mg at 3am", "b12 and mp3", "help!", "I have 24hrs", "call 988 now"]
)
def test_normalize_leaves_numbers_and_punctuation_alone(text):
    assert normalize(text) == text


# --- head, policy, artifact ------------------------------------------------------------------


def test_linear_head_scores_are_sigmoids_and_round_trip(tmp_path):
    head = _head()
    x = np.zeros((1, 2 * len(VOCAB)), dtype=np.float32)
    x[0, 0] = 1
    s = head.scores(x, Role.USER)
    assert s.shape == (1, 2) and s[0, 0] > 0.99 and s[0, 1] < 0.01
    head.save(tmp_path / "h.npz")
    again = LinearHead.load(tmp_path / "h.npz", ("crisis", "medical"))
    np.testing.assert_array_equal(again.scores(x, Role.USER), s)
    assert again.n_features(Role.ASSISTANT) == len(VOCAB)


def test_linear_head_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="expected"):
        LinearHead({Role.USER: (np.zeros((4, 3)), np.zeros(3))}, ("crisis", "medical"))


def test_policy_validates_thresholds_and_features():
    with pytest.raises(ValueError, match="lacks labels"):
        Policy("v", thresholds={"user": {"crisis": 0.5}, "assistant": THRESHOLDS["assistant"]})
    with pytest.raises(ValueError, match="outside"):
        Policy(
            "v",
            thresholds={
                "user": {"crisis": 2, "medical": 0.5},
                "assistant": THRESHOLDS["assistant"],
            },
        )
    with pytest.raises(ValueError, match="context_rule"):
        Policy("v", thresholds=THRESHOLDS, context_rule="sometimes")
    with pytest.raises(ValueError, match="user_features"):
        Policy("v", thresholds=THRESHOLDS, user_features="everything")
    with pytest.raises(ValueError, match="encoder_layers"):
        Policy("v", thresholds=THRESHOLDS, encoder_layers=-1)
    with pytest.raises(ValueError, match="encoder_quantization"):
        Policy("v", thresholds=THRESHOLDS, encoder_quantization="int4")


def test_artifact_round_trip(tmp_path):
    kw = {"training": {"train_hash": "abc"}, "encoder_layers": 3}
    save_artifact(tmp_path / "a", _head(), _policy(**kw, encoder_quantization="int8-dynamic"))
    head, policy = load_artifact(tmp_path / "a")
    assert policy == _policy(**kw, encoder_quantization="int8-dynamic")
    assert json.loads((tmp_path / "a" / "policy.json").read_text())["policy_version"] == "test-1"
    assert head.n_features(Role.USER) == 2 * len(VOCAB)


def test_artifact_with_an_encoder_adapter_copies_it_and_checks_it_is_there(tmp_path):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError, match="exactly when"):
        save_artifact(tmp_path / "a", _head(), _policy(), adapter)
    with pytest.raises(ValueError, match="exactly when"):
        save_artifact(tmp_path / "a", _head(), _policy(encoder_adapter="enc"))
    save_artifact(tmp_path / "a", _head(), _policy(encoder_adapter="enc"), adapter)
    _, policy = load_artifact(tmp_path / "a")
    folder = encoder_adapter_dir(policy, tmp_path / "a")
    assert folder == tmp_path / "a" / "enc"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights"
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        encoder_adapter_dir(policy, tmp_path / "a")
    assert encoder_adapter_dir(_policy(), tmp_path / "a") is None


def test_an_encoder_adapter_needs_a_sentence_transformers_encoder(tmp_path):
    from companion.safety.encoding import adapt_encoder

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="sentence-transformers"):
        adapt_encoder(FakeEncoder(), tmp_path)
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json"):
        adapt_encoder(FakeEncoder(), tmp_path / "nothing")


def test_missing_artifact_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="safety artifact"):
        load_artifact(tmp_path / "nothing")


def test_shipped_artifact_is_complete():
    """Policy 6.4 (round 28): a cross-encoder reads user messages on three levels; policy 3.4's
    head (its encoder adapter, user and reply weights) checks replies and confirms the
    cross-encoder's less sure crisis redirects."""
    head, policy = load_artifact()
    assert policy.labels == ("crisis", "medical", "risk") and not policy.answer_features
    assert policy.user_reader == "cross" and policy.head_labels == ("crisis", "medical")
    assert policy.encoder == "embedded:all-minilm-l6-v2"
    assert policy.user_features == "newest+window" and policy.context_turns == 3
    assert policy.context_rule == "rise" and 1 < policy.cross_temperature < 3
    b = policy.ngram_buckets
    assert head.n_features(Role.USER) == 768 + 3 * b  # the second opinion's weights
    assert head.n_features(Role.ASSISTANT) == 384 + 2 * b
    assert policy.training["train_hash"]
    cross = cross_dir(policy)
    assert cross is not None and policy.training["cross_adapter_digest"] == adapter_digest(cross)
    adapter = encoder_adapter_dir(policy)
    assert adapter is not None and policy.encoder_adapter == "encoder_adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert policy.training["encoder_adapter_digest"] == adapter_digest(adapter)
    user, second = policy.thresholds["user"], policy.second_opinion
    assert all(0 < user[lab] < 1 for lab in policy.labels)
    assert user["crisis"] < second["sure"] <= 1 and 0 < second["head"] < 1
    assert all(0 < policy.thresholds["assistant"][lab] < 1 for lab in policy.head_labels)


def test_from_defaults_refuses_an_encoder_the_head_was_not_trained_on():
    with pytest.raises(ModelLoadError, match="trained on encoder"):
        SafetyClassifier.from_defaults(FakeEncoder())


def test_from_defaults_accepts_a_matching_artifact(tmp_path):
    save_artifact(tmp_path, _head(), _policy())
    clf = SafetyClassifier.from_defaults(FakeEncoder(), artifact=tmp_path)
    assert clf.classify("I want to die").category is Category.CRISIS


def test_features_with_ngrams_are_sparse_and_scaled():
    from companion.safety.features import build_features

    e = np.ones((2, 3), dtype=np.float32)
    dense = build_features(e, ["a", "b"], e, ["a", "b"])
    assert isinstance(dense, np.ndarray) and dense.shape == (2, 6)
    x = build_features(e, ["kill myself", "kill time"], None, None, ngram_buckets=64)
    assert x.shape == (2, 3 + 2 * 64)
    ngrams = x[:, 3:].toarray()
    np.testing.assert_allclose(np.linalg.norm(ngrams[:, :64], axis=1), [2.0, 2.0], rtol=1e-5)
    assert not np.allclose(ngrams[0], ngrams[1])


def test_blockwise_scores_equal_scores_of_the_stacked_features():
    from companion.safety.features import build_features, feature_blocks

    rng = np.random.default_rng(0)
    e, w_emb = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4))
    texts, windows = ["kill myself", "kill time", "dose"], ["a\nkill myself", "b", "c\ndose"]
    x = build_features(e, texts, w_emb.astype(np.float32), windows, ngram_buckets=32)
    head = LinearHead({Role.USER: (rng.normal(size=(x.shape[1], 2)), np.array([0.1, -0.2]))})
    blocks = feature_blocks(e, texts, w_emb.astype(np.float32), windows, ngram_buckets=32)
    np.testing.assert_allclose(
        head.scores_blocks(blocks, Role.USER), head.scores(x, Role.USER), rtol=1e-5
    )
    with pytest.raises(ValueError, match="features wide"):
        head.scores_blocks(blocks[:-1], Role.USER)


# --- verdicts --------------------------------------------------------------------------------


def test_verdict_carries_scores_thresholds_and_version(clf):
    v = clf.classify("what dose should I take")
    assert v.category is Category.MEDICAL and v.direction is Direction.INPUT
    assert v.thresholds == THRESHOLDS["user"] and v.policy_version == "test-1"
    assert set(v.scores) == {"crisis", "medical"}


def test_crisis_outranks_medical(clf):
    v = clf.classify("I want to die, how many pills")
    assert v.scores["crisis"] >= 0.5 and v.scores["medical"] >= 0.5
    assert v.category is Category.CRISIS


def test_assistant_replies_use_their_own_head_and_thresholds(clf):
    v = clf.classify("take a dose of 50", role="assistant")
    assert v.direction is Direction.OUTPUT and v.thresholds == THRESHOLDS["assistant"]
    assert v.category is Category.MEDICAL


def test_batch_matches_single_calls_and_encodes_each_text_once(clf):
    items = [
        ClassifyItem("I want to die"),
        ClassifyItem("nice weather", Role.ASSISTANT),
        ClassifyItem("I'm parked next to it now", Role.USER, ("How high is that bridge?",)),
        ClassifyItem("nice weather", Role.USER, ("nice weather",)),
    ]
    batch = clf.classify_batch(items)
    # first call: four newest messages and two windows; second call: the turns before the
    # newest, only for the third item, whose window scores above its newest message alone
    assert [len(c) for c in clf.encoder.calls] == [6, 1]
    assert clf.encoder.calls[1] == ["How high is that bridge?"]
    singles = [clf.classify(i.text, i.role, i.context) for i in items]
    assert [v.category for v in batch] == [v.category for v in singles]
    assert clf.classify_batch([]) == []


# --- conversation context --------------------------------------------------------------------


def test_window_keeps_newest_and_drops_oldest_first():
    assert window_text("now", ["a b", "c d", "e f", "g h"], turns=3, max_words=100) == (
        "c d\ne f\ng h\nnow"
    )
    assert window_text("now", ["a b", "c d"], turns=3, max_words=3) == "c d\nnow"
    assert window_text("one two three four", ["a"], turns=3, max_words=2) == "one two three four"
    assert window_text("now", ["a"], turns=0, max_words=10) == "now"


def test_encoder_inputs_only_build_a_window_for_user_turns_with_context():
    p = _policy()
    assert encoder_inputs(ClassifyItem("hi"), p) == ("hi", None)
    assert encoder_inputs(ClassifyItem("hi", Role.USER, ("", "  ")), p) == ("hi", None)
    assert encoder_inputs(ClassifyItem("hi", Role.ASSISTANT, ("x",)), p) == ("hi", None)
    assert encoder_inputs(ClassifyItem("h1 th3re", Role.USER, ("k1ll",)), p) == (
        "h1 there",
        "kill\nh1 there",
    )
    assert encoder_inputs(ClassifyItem("hi", Role.USER, ("x",)), _policy(context_turns=0)) == (
        "hi",
        None,
    )


def test_context_escalation_fires_only_with_the_window(clf):
    newest = "I'm parked next to it now"
    assert clf.classify(newest).category is Category.NONE
    v = clf.classify(newest, context=["How high is that bridge?", "How long is the fall?"])
    assert v.category is Category.CRISIS


def test_an_old_crisis_turn_does_not_retrigger_under_the_rise_rule():
    context = ["I want to die"]
    rise = SafetyClassifier(FakeEncoder(), _head(), _policy())
    assert rise.classify("nice weather today", context=context).category is Category.NONE
    # the same head without the rule: the old turn alone pushes the window over the threshold
    plain = SafetyClassifier(FakeEncoder(), _head(), _policy(context_rule="window"))
    assert plain.classify("nice weather today", context=context).category is Category.CRISIS


def test_a_crisis_message_fires_whatever_the_context(clf):
    v = clf.classify("I want to die", context=["I want to die", "I want to die"])
    assert v.category is Category.CRISIS


def test_context_is_ignored_for_assistant_replies(clf):
    v = clf.classify("I'm parked next to it now", "assistant", ["How high is that bridge?"])
    assert v.category is Category.NONE


def test_hashed_ngrams_equal_scikit_learns_hashing_vectorizer():
    import json
    from pathlib import Path

    from sklearn.feature_extraction.text import HashingVectorizer

    from companion.safety.features import _analyzers, hashed_ngrams

    seed = Path(__file__).resolve().parents[1] / "safety" / "data"
    texts = [json.loads(line)["text"] for line in (seed / "crisis.jsonl").open()][:200]
    texts += ["", "a", "  spaced   out  ", "ÉMOJI 💊 naïve café", "x" * 300, "k i l l", "a b"]
    words, chars = _analyzers()
    for analyzer, kind in ((words, "word"), (chars, "char_wb")):
        ngram = (1, 2) if kind == "word" else (3, 5)
        for buckets in (2**14, 7):
            ref = HashingVectorizer(
                n_features=buckets, analyzer=kind, ngram_range=ngram, alternate_sign=False
            ).transform(texts)
            ours = hashed_ngrams(texts, analyzer, buckets, 2.0)
            assert ours.shape == ref.shape
            np.testing.assert_allclose(ours.tocsr().toarray(), 2.0 * ref.toarray(), atol=1e-6)
            w = np.random.default_rng(0).normal(size=(buckets, 2)).astype(np.float32)
            np.testing.assert_allclose(ours @ w, 2.0 * (ref @ w), atol=1e-4)
