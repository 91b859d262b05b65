"""The listening checks of ``training/listening.py``: one test per rule, the style guide's own
examples, agreement with the hand-labelled replies, and ``summarise``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
from listening import Listening, assess, summarise  # noqa: E402

LABELS = ROOT / "tests" / "fixtures" / "listening_labels.jsonl"
KEYS = ("reflection", "open_question", "directive", "off_topic", "wrong_speaker")


def said(*turns: str) -> list[dict[str, str]]:
    """A conversation from alternating user and assistant turns, the user's first and last."""
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(turns)
    ]


SAD = said("i've been working twelve hour days and i'm wiped out")


@pytest.mark.parametrize(
    ("reply", "conversation"),
    [
        ("It sounds like you're exhausted.", SAD),
        ("So the breakup came out of nowhere.", said("the breakup came out of nowhere")),
        ("That must be hard.", said("my dog died")),
        ("Anyone would feel shaken after that.", said("someone shouted at me on the bus")),
        ("Being yelled at by your manager sounds humiliating.", said("my manager yelled at me")),
        ("Grief often comes in waves, which is really common.", said("my nan died in march")),
        ("I'm glad you feel a bit better.", said("thanks, i feel a bit better now")),
    ],
)
def test_reflection_found(reply: str, conversation: list[dict[str, str]]) -> None:
    assert assess(reply, conversation).reflection


@pytest.mark.parametrize(
    ("reply", "conversation"),
    [
        ("Are you okay?", SAD),
        ("That sounds like depression.", said("i havent enjoyed anything for weeks")),
        ("At least you still have a job.", said("i got a pay cut")),
        ("I went through a breakup too.", said("i went through a breakup")),
        ("Oh! Congratulations on your exam!", said("my exam went terrible")),
        ("It sounds like she didn't see her potential there.", said("my sister quit her job")),
        ("You need to sleep more.", SAD),
    ],
)
def test_reflection_not_found(reply: str, conversation: list[dict[str, str]]) -> None:
    assert not assess(reply, conversation).reflection


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("What has been the hardest part?", True),
        ("How long has it been like this?", True),
        ("Tell me more about that.", True),
        ("I'd love to hear more about it.", True),
        ("If you could change one thing, what would it be?", True),
        ("Are you okay?", False),
        ("Do you want to talk about it?", False),
        ("Would you like to tell me what happened?", False),
        ("Is it the hours or the people?", False),
        ("So, why wouldn't you explain yourself better?", False),
        ("So how do I get started?", False),
        ("I wondered about that.", False),
    ],
)
def test_open_question(reply: str, expected: bool) -> None:
    assert assess(reply, SAD).open_question is expected


@pytest.mark.parametrize(
    "reply",
    [
        "You should take a break.",
        "You need to set boundaries. ",
        "Try to get some fresh air.",
        "Make sure you eat something.",
        "I recommend a revision timetable.",
        "It's important to rest.",
        "Talk to your boss about it.",
        "Block him. Delete his number. Move on.",
        "- Sleep early\n- Eat well\n- Walk daily",
    ],
)
def test_unrequested_orders_are_directive(reply: str) -> None:
    assert assess(reply, SAD).directive


@pytest.mark.parametrize(
    "reply",
    [
        "Some people find it helps to write the worries down.",
        "You could try a short walk after work.",
        "Have you tried taking a day off?",
        "Take care of yourself tonight.",
        "Tell me more about the days.",
        "So you heard that you should have tried harder.",
    ],
)
def test_options_and_closings_are_not_directive(reply: str) -> None:
    assert not assess(reply, SAD).directive


@pytest.mark.parametrize(
    "question",
    [
        "what can i do tonight?",
        "any tips for sleeping?",
        "how do i tell my boss",
        "help me sort this out",
        "what would you do?",
        "is there anything that helps",
    ],
)
def test_requested_advice_is_not_directive(question: str) -> None:
    reply = "You should try to get to bed earlier. Make sure your phone is off."
    assert not assess(reply, said("i'm exhausted", "That sounds hard.", question)).directive
    assert assess(reply, said("i'm exhausted")).directive


@pytest.mark.parametrize(
    ("reply", "conversation", "expected"),
    [
        ("That's great! How are you?", said("my cat died last night"), True),
        ("Did you know that octopuses have three hearts?", said("i fought with my friend"), True),
        ("1. Eat more fruit\n2. Drink water\n3. Wear sunscreen", said("work stresses me"), True),
        ("Avoid caffeine and keep a regular bedtime.", said("i cant sleep at night"), False),
        ("What happened?", said("worst day ever"), False),
        ("I'm here for you.", said("i just want someone to talk to"), False),
        ("You're welcome. Take care.", said("ok thanks, bye"), False),
        ("Hi, what's on your mind today?", said("hi"), False),
        ("Have you talked to her since?", said("my girlfriend left me"), False),
    ],
)
def test_off_topic(reply: str, conversation: list[dict[str, str]], expected: bool) -> None:
    assert assess(reply, conversation).off_topic is expected


@pytest.mark.parametrize(
    ("reply", "conversation", "expected"),
    [
        ("How's your relationship with your wife working out?", said("i feel distant"), True),
        ("That sounds hard. Talk to your pediatrician.", said("my toddler won't eat"), True),
        ("So how do I get started?", said("i want to start running"), True),
        ("What should I do?", said("i want to quit my job"), True),
        ("When I was your age, I hated school too.", said("i hate school"), True),
        ("My wife and I had the same problem.", said("wedding planning is stressful"), True),
        ("I'm a nurse too and I never got used to nights.", said("i'm a nurse"), True),
        ("Ask your line manager for feedback.", said("i keep getting passed over"), True),
        ("It's frustrating when your manager moves things.", said("my manager moved it"), False),
        ("Is your boss like that?", said("work sucks", "Oh?", "my boss yells"), False),
        ("How are your kids taking it?", said("my son and daughter are upset"), False),
        ("Your mum sounds worried.", said("my mom keeps calling"), False),
        ("Your partner sounds supportive.", said("my girlfriend helped me"), False),
        ("Your wife sounds supportive.", said("my girlfriend helped me"), True),
        ("How can I help you with that?", said("i feel stuck"), False),
        ("Some people say 'my fault' a lot.", said("i blame myself"), False),
    ],
)
def test_wrong_speaker(reply: str, conversation: list[dict[str, str]], expected: bool) -> None:
    assert assess(reply, conversation).wrong_speaker is expected


def test_only_user_turns_name_people() -> None:
    conversation = said("just feeling flat", "How's your partner been?", "fine i guess")
    assert assess("Things with your partner sound flat too.", conversation).wrong_speaker


def test_words_and_determinism() -> None:
    reply = "It sounds like you're exhausted after a long week."
    first = assess(reply, SAD)
    assert first == assess(reply, SAD)
    assert first.words == 9


def test_labelled_replies_fixture_is_well_formed() -> None:
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    assert len(rows) >= 150
    for row in rows:
        assert set(row) == {"conversation", "reply", "labels"}
        assert set(row["labels"]) == set(KEYS)
        assert row["conversation"][-1]["role"] == "user"
    assert len({row["reply"] for row in rows}) > 0.9 * len(rows)


def test_agreement_with_labelled_replies() -> None:
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    checks = [assess(row["reply"], row["conversation"]) for row in rows]
    print(f"\n{len(rows)} labelled replies")
    accuracy = {}
    for key in KEYS:
        pairs = [(getattr(c, key), row["labels"][key]) for c, row in zip(checks, rows, strict=True)]
        tp = sum(got and want for got, want in pairs)
        fp = sum(got and not want for got, want in pairs)
        fn = sum(want and not got for got, want in pairs)
        accuracy[key] = sum(got == want for got, want in pairs) / len(pairs)
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        print(f"{key:14} accuracy {accuracy[key]:.3f} precision {precision:.3f}", end=" ")
        print(f"recall {recall:.3f}")
    assert all(value >= 0.85 for value in accuracy.values()), accuracy


def test_summarise_shares() -> None:
    def labels(words: int = 30, **flags: bool) -> Listening:
        return Listening(**{key: flags.get(key, False) for key in KEYS}, words=words)

    results = [
        labels(reflection=True, open_question=True),
        labels(open_question=True, words=10),
        labels(directive=True, off_topic=True, words=120),
        labels(wrong_speaker=True, words=90),
    ]
    assert summarise(results) == {
        "reflection": 0.25,
        "open_question": 0.5,
        "reflection_or_open_question": 0.5,
        "directive": 0.25,
        "off_topic": 0.25,
        "wrong_speaker": 0.25,
        "off_topic_or_wrong_speaker": 0.5,
        "words_20_90": 0.5,
        "n": 4.0,
    }
    assert summarise([])["n"] == 0.0
    assert summarise([])["reflection"] == 0.0
