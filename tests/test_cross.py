"""The cross-encoder user reader: inputs, routing and decisions (scripted reader, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from companion.errors import ModelLoadError
from companion.safety import LinearHead, Policy, SafetyClassifier, load_artifact
from companion.safety.cross import CHECK_IN_MARK, CLASSES, CrossReader, pair_texts, scores
from companion.types import Category, Decision, Role

LABELS = ("crisis", "medical", "risk")
USER = {"crisis": 0.5, "medical": 0.5, "risk": 0.3}


class ScriptedReader:
    """Class probabilities by newest message; records the pairs it was asked about."""

    def __init__(self, by_message: dict[str, list[float]]) -> None:
        self.by_message = by_message
        self.pairs: list[tuple[str, str]] = []

    def probabilities(self, pairs):
        self.pairs += list(pairs)
        return np.array([self.by_message[b] for _, b in pairs], dtype=np.float32)


class _ZeroEncoder:
    name = "zero"

    def encode(self, texts):
        return np.zeros((len(texts), 4), dtype=np.float32)


def _policy(**kw) -> Policy:
    return Policy(
        "cross-test",
        labels=LABELS,
        thresholds={"user": USER, "assistant": {"crisis": 0.9, "medical": 0.9}},
        encoder="zero",
        user_features="newest",
        user_reader="cross",
        cross_dir="cross",
        **kw,
    )


def _clf(reader) -> SafetyClassifier:
    zeros = (np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    head = LinearHead({Role.ASSISTANT: zeros}, ("crisis", "medical"))
    return SafetyClassifier(_ZeroEncoder(), head, _policy(), reader)


#                    none  check_in crisis medical
SAD = [0.95, 0.03, 0.01, 0.01]
PASSIVE = [0.55, 0.35, 0.05, 0.05]
PLAN = [0.05, 0.05, 0.85, 0.05]
DOSE = [0.30, 0.02, 0.08, 0.60]


def test_three_levels_come_from_the_class_probabilities():
    clf = _clf(ScriptedReader({"sad": SAD, "passive": PASSIVE, "plan": PLAN, "dose": DOSE}))
    got = {t: clf.classify(t) for t in ("sad", "passive", "plan", "dose")}
    assert got["sad"].decision is Decision.NONE
    assert (got["passive"].decision, got["passive"].category) == (
        Decision.CHECK_IN,
        Category.CRISIS,
    )
    assert (got["plan"].decision, got["plan"].category) == (Decision.REDIRECT, Category.CRISIS)
    assert (got["dose"].decision, got["dose"].category) == (Decision.REDIRECT, Category.MEDICAL)
    assert got["passive"].scores == {"crisis": 0.05, "medical": 0.05, "risk": 0.4}


def test_replies_go_to_the_head_and_users_to_the_reader_in_one_batch():
    from companion.safety import ClassifyItem

    reader = ScriptedReader({"sad": SAD})
    clf = _clf(reader)
    out = clf.classify_batch(
        [ClassifyItem("sad"), ClassifyItem("That sounds hard.", Role.ASSISTANT)]
    )
    assert len(reader.pairs) == 1  # the reply never reaches the cross-encoder
    assert out[1].scores == {"crisis": 0.5, "medical": 0.5, "risk_topic": 0.0}  # no risk head
    assert out[1].decision is Decision.NONE


def test_the_reader_sees_the_conversation_and_the_check_in_marker():
    reader = ScriptedReader({"maybe": PASSIVE})
    clf = _clf(reader)
    clf.classify("maybe", context=["one", "two", "three", "four"], last_assistant="Are you?")
    first, message = reader.pairs[-1]
    assert message == "maybe"
    assert first == f"two | three | four {CHECK_IN_MARK}"  # the newest 3 turns, then the mark


def test_pair_texts_keeps_the_newest_context_words_and_the_message_start():
    long_turn = " ".join(f"w{i}" for i in range(300))
    first, message = pair_texts(long_turn, [long_turn], False, 3)
    assert first.split()[-1] == "w299" and len(first.split()) == 100
    assert message.split()[0] == "w0" and len(message.split()) == 90
    assert pair_texts("Hi", [], False, 3) == ("", "Hi")


def test_scores_map_classes_to_labels():
    p = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(scores(p, LABELS), [[0.3, 0.4, 0.5]])
    assert CLASSES == ("none", "check_in", "crisis", "medical")


def test_a_cross_policy_needs_its_reader_and_its_folder():
    zeros = (np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    head = LinearHead({Role.ASSISTANT: zeros}, ("crisis", "medical"))
    with pytest.raises(ValueError, match="pass cross"):
        SafetyClassifier(_ZeroEncoder(), head, _policy())
    with pytest.raises(ValueError, match="cross_dir"):
        Policy("x", labels=LABELS, thresholds={}, user_reader="cross")
    with pytest.raises(ValueError, match="lacks labels"):
        Policy(
            "x",
            labels=LABELS,
            thresholds={"user": {"crisis": 0.5, "medical": 0.5}, "assistant": USER},
            user_reader="cross",
            cross_dir="cross",
        )


def test_an_artifact_without_its_cross_encoder_is_refused(tmp_path):
    from companion.safety.artifact import cross_dir

    policy = _policy()
    (tmp_path / "policy.json").write_text(json.dumps(policy.to_json()), "utf-8")
    zeros = (np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    LinearHead({Role.ASSISTANT: zeros}, ("crisis", "medical")).save(tmp_path / "head.npz")
    head, loaded = load_artifact(tmp_path)
    assert head.labels == ("crisis", "medical") and loaded.user_reader == "cross"
    with pytest.raises(ModelLoadError, match=r"lacks adapter_config\.json"):
        cross_dir(loaded, tmp_path)


def test_cross_reader_probabilities_on_a_tiny_bert(tmp_path):
    """The real reader path (tokenizer pair -> transformer -> mean pool -> head -> softmax) on
    a BERT built from a config: rows sum to one, and temperature flattens them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    raw.train_from_iterator(
        ["hello there | how are you"], trainers.WordLevelTrainer(special_tokens=special)
    )
    from tokenizers.processors import TemplateProcessing

    raw.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    model = BertModel(
        BertConfig(
            vocab_size=raw.get_vocab_size(),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 8)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    sharp = CrossReader(tok, model, weight, bias, 1.0)
    flat = CrossReader(tok, model, weight, bias, 100.0)
    pairs = [("hello there", "how are you"), ("", "hello")]
    p = sharp.probabilities(pairs)
    assert p.shape == (2, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert np.ptp(flat.probabilities(pairs)) < np.ptp(p)
    with pytest.raises(ValueError, match="temperature"):
        CrossReader(tok, model, weight, bias, 0.0)


def _cascade(head_crisis: float, sure: float = 0.8) -> tuple[SafetyClassifier, list]:
    """A cross policy whose head (user weights kept) scores every user message
    ``head_crisis``; the head's calls are recorded."""
    logit = float(np.log(head_crisis / (1.0 - head_crisis)))
    zeros = np.zeros((4, 2), np.float32)
    weights = {
        Role.USER: (zeros, np.array([logit, -9.0], np.float32)),
        Role.ASSISTANT: (zeros, np.zeros(2, np.float32)),
    }
    head = LinearHead(weights, ("crisis", "medical"))
    policy = _policy(second_opinion={"sure": sure, "head": 0.2})
    reader = ScriptedReader({"sad": SAD, "maybe": MAYBE, "plan": PLAN, "dose": DOSE})
    clf = SafetyClassifier(_ZeroEncoder(), head, policy, reader)
    asked: list = []
    score = clf._head_scores
    clf._head_scores = lambda items: asked.append([i.text for i in items]) or score(items)
    return clf, asked


#                    none  check_in crisis medical
MAYBE = [0.30, 0.05, 0.60, 0.05]  # crisis between the ask (0.5) and sure (0.8) thresholds


def test_between_ask_and_sure_the_head_must_agree_before_a_redirect():
    agrees, asked = _cascade(head_crisis=0.6)
    v = agrees.classify("maybe", context=["I want to kill myself"])
    assert (v.decision, v.category) == (Decision.REDIRECT, Category.CRISIS)
    assert v.scores["crisis_second"] == 0.6 and asked == [["maybe"]]
    disagrees, _ = _cascade(head_crisis=0.05)
    v = disagrees.classify("maybe", context=["I want to kill myself"])
    # the rest of the decision is the cross-encoder's: risk 0.65 >= 0.3 checks in
    assert (v.decision, v.category) == (Decision.CHECK_IN, Category.CRISIS)
    assert v.scores["crisis_second"] == 0.05


def test_the_head_is_asked_only_between_the_thresholds_and_only_about_users():
    from companion.safety import ClassifyItem

    clf, asked = _cascade(head_crisis=0.05)
    out = clf.classify_batch(
        [
            ClassifyItem("sad"),
            ClassifyItem("plan"),  # crisis 0.85 >= sure: redirected alone
            ClassifyItem("dose"),  # crisis 0.08 < ask: medical, never asked
            ClassifyItem("maybe"),
            ClassifyItem("That sounds hard.", Role.ASSISTANT),
        ]
    )
    assert asked == [["That sounds hard."], ["maybe"]]  # the reply's own score, then the cascade
    assert [v.decision for v in out] == [
        Decision.NONE,
        Decision.REDIRECT,
        Decision.REDIRECT,
        Decision.CHECK_IN,
        Decision.NONE,
    ]
    assert out[1].category is Category.CRISIS and "crisis_second" not in out[1].scores
    assert out[2].category is Category.MEDICAL


def test_a_second_opinion_needs_a_cross_policy_its_keys_and_user_weights():
    with pytest.raises(ValueError, match="second_opinion"):
        _policy(second_opinion={"sure": 0.8})
    with pytest.raises(ValueError, match="outside"):
        _policy(second_opinion={"sure": 1.5, "head": 0.2})
    with pytest.raises(ValueError, match="second_opinion"):
        Policy(
            "x",
            thresholds={"user": USER, "assistant": USER},
            second_opinion={"sure": 0.8, "head": 0.2},
        )
    zeros = (np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    replies_only = LinearHead({Role.ASSISTANT: zeros}, ("crisis", "medical"))
    policy = _policy(second_opinion={"sure": 0.8, "head": 0.2})
    with pytest.raises(ValueError, match="user weights"):
        SafetyClassifier(_ZeroEncoder(), replies_only, policy, ScriptedReader({}))
    assert Policy.from_json(policy.to_json()).second_opinion == {"sure": 0.8, "head": 0.2}
