"""Models without a chat template (DialoGPT-style): one dialogue format, the same in the
service and in training. A tiny GPT-2 model and byte-level BPE tokenizer are built in the test
(nothing is downloaded): a turn is served through the library pipeline, three LoRA steps are
trained with ``training/train_sft.py``, and the saved adapter loads back onto the base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from companion import Companion, GenerationConfig, PipelineConfig
from companion.models import HFGenerator, load_causal_lm, render_chat, stop_token_ids
from companion.prompts import SYSTEM_PROMPT
from companion.sessions import InMemorySessionStore
from companion.types import Action

from .fakes import FakeGuard

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"
SENTENCES = [
    "I feel anxious about my exams next week.",
    "It sounds like the exams are weighing on you. What worries you most?",
    "I have been sleeping badly and I feel tired all day.",
    "Poor sleep makes everything harder. How long has it been like this?",
    "My friend and I had an argument and I do not know how to fix it.",
    "That sounds painful. What would you like to say to your friend?",
    SYSTEM_PROMPT,
]
# Phi-3 Mini's chat template (microsoft/Phi-3-mini-4k-instruct): EOS after a whole conversation.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def build_tokenizer(extra_special: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        additional_special_tokens=list(extra_special),
    )


@pytest.fixture(scope="module")
def tiny_dialogpt(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with a tokenizer that has no chat template, saved like DialoGPT."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-dialogpt")
    tokenizer = build_tokenizer()
    assert not getattr(tokenizer, "chat_template", None)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,  # as DialoGPT
        n_layer=2,
        n_head=2,
        n_embd=32,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_dialogue_format_joins_turns_with_eos(tiny_dialogpt: Path):
    _, tok = load_causal_lm(tiny_dialogpt, device="cpu")
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "I feel low"},
    ]
    text = f"Be kind.{EOS}hi{EOS}hello{EOS}I feel low{EOS}"
    assert render_chat(tok, messages) == text
    assert render_chat(tok, messages, add_generation_prompt=False) == text
    assert stop_token_ids(tok) == [tok.eos_token_id]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.eos_token_id) == 4  # EOS is one token, not its spelling


def test_a_tokenizer_without_template_or_eos_is_refused():
    class Bare:
        chat_template = None
        eos_token = None

    with pytest.raises(ValueError, match="no chat template and no EOS token"):
        render_chat(Bare(), [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="neither a chat template nor an EOS token"):
        HFGenerator(object(), Bare())


def test_a_turn_is_served_through_the_pipeline(tiny_dialogpt: Path):
    lm, tok = load_causal_lm(tiny_dialogpt, device="cpu")
    generator = HFGenerator(lm, tok)
    assert generator.context_window == 1024
    config = PipelineConfig(generation=GenerationConfig(max_new_tokens=6, do_sample=False))
    companion = Companion(FakeGuard(), generator, InMemorySessionStore(), config=config)
    session = companion.start_session(locale="en-GB")
    reply = session.send("I feel anxious about my exams")
    assert reply.action is Action.ANSWERED
    assert reply.text.strip()
    # The model saw the system prompt and the message as EOS-ended segments.
    prompt = generator.render(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "x"}]
    )
    assert prompt == f"{SYSTEM_PROMPT}{EOS}x{EOS}"
    second = session.send("Thank you")
    assert second.action is Action.ANSWERED
    assert [t.text for t in session.history()][0::2] == [
        "I feel anxious about my exams",
        "Thank you",
    ]


def training_module(name: str):
    sys.path.insert(0, str(ROOT / "training"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def trained_text(tok, enc: dict[str, list[int]], ignore: int) -> str:
    """The text of the tokens the loss covers."""
    ids = enc["input_ids"]
    return tok.decode([i for i, lab in zip(ids, enc["labels"], strict=True) if lab != ignore])


def test_training_masks_only_the_replies_in_the_dialogue_format(tiny_dialogpt: Path):
    common = training_module("common")
    _, tok = load_causal_lm(tiny_dialogpt, device="cpu")
    messages = [
        {"role": "user", "content": "I feel anxious."},
        {"role": "assistant", "content": "What worries you most?"},
        {"role": "user", "content": "The exams."},
        {"role": "assistant", "content": "That sounds heavy."},
    ]
    enc = common.encode_chat(tok, messages, max_length=512)
    assert enc is not None
    assert tok.decode(enc["input_ids"]) == (
        f"{SYSTEM_PROMPT}{EOS}I feel anxious.{EOS}What worries you most?{EOS}"
        f"The exams.{EOS}That sounds heavy.{EOS}"
    )
    assert (
        trained_text(tok, enc, common.IGNORE_INDEX)
        == f"What worries you most?{EOS}That sounds heavy.{EOS}"
    )


def test_training_handles_a_template_that_closes_the_conversation_with_eos():
    """Phi-3's template ends the whole conversation with EOS; several assistant turns used to
    fail the incremental-rendering check."""
    common = training_module("common")
    tok = build_tokenizer(extra_special=("<|end|>",))
    tok.chat_template = PHI3_TEMPLATE
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "take care"},
    ]
    enc = common.encode_chat(tok, messages, max_length=512)
    assert enc is not None
    assert trained_text(tok, enc, common.IGNORE_INDEX) == f"hello<|end|>\ntake care<|end|>\n{EOS}"
    end = tok.convert_tokens_to_ids("<|end|>")
    assert stop_token_ids(tok) == sorted({tok.eos_token_id, end})


def test_three_lora_steps_and_the_adapter_loads_back(
    tiny_dialogpt: Path, tmp_path: Path, monkeypatch
):
    import torch

    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "messages": [
                {"role": "user", "content": SENTENCES[i]},
                {"role": "assistant", "content": SENTENCES[i + 1]},
            ]
        }
        for i in (0, 2, 4)
    ]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": SENTENCES[0]},
                {"role": "assistant", "content": SENTENCES[1]},
                {"role": "user", "content": SENTENCES[2]},
                {"role": "assistant", "content": SENTENCES[3]},
            ]
        }
    )
    for name in ("train", "validation"):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train_sft = training_module("train_sft")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train_sft.py",
            "--config",
            str(ROOT / "training" / "configs" / "tiny-ci.yaml"),
            "--base_model",
            str(tiny_dialogpt),
            "--target_modules",
            "c_attn",
            "c_proj",
            "--data_dir",
            str(data),
            "--output_dir",
            str(out),
            "--max_length",
            "1024",
        ],
    )
    train_sft.main()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["base_model"] == str(tiny_dialogpt)
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()

    base, tok = load_causal_lm(tiny_dialogpt, device="cpu")
    tuned, _ = load_causal_lm(tiny_dialogpt, adapter, merge_adapter=True, device="cpu")
    ids = tok(render_chat(tok, [{"role": "user", "content": "hi"}]), return_tensors="pt")
    with torch.inference_mode():
        diff = (base(**ids).logits - tuned(**ids).logits).abs().max().item()
    assert diff > 1e-6
    # The tuned model serves through the same generator.
    gen = HFGenerator(tuned, tok)
    text = "".join(
        gen.stream([{"role": "user", "content": "hi"}], GenerationConfig(max_new_tokens=4))
    )
    assert isinstance(text, str)
