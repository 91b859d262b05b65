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
