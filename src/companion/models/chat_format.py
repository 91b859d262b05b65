"""How a conversation becomes the model's prompt text, for every model the library serves.

A tokenizer with a chat template (SmolLM2, Phi-3, Llama...) renders with that template. A
tokenizer without one (DialoGPT and other GPT-2-style dialogue models, the seed project's other
backbone) gets the **dialogue format** DialoGPT was trained on: every turn's text followed by
the EOS token, nothing else::

    {system}<eos>{user}<eos>{assistant}<eos>{user}<eos>

The model writes its reply after the last EOS and ends it with EOS. There are no role markers:
the speakers alternate. **The system prompt is kept, as the first segment**, so that a model
fine-tuned by ``training/`` (which formats its examples with this same function) learns the
persona prompt as the opening of every conversation, exactly as the service sends it. A bare
DialoGPT has never seen an instruction and reads it as an earlier turn of the conversation.

Generation (:class:`~companion.models.HFGenerator`), context assembly and training all call
:func:`render_chat`, so the format is defined once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import ChatMessage

__all__ = ["has_chat_template", "render_chat", "stop_token_ids"]

# End-of-turn tokens of common chat templates that are not the tokenizer's EOS token:
# ChatML (SmolLM2, Qwen), Phi-3, Llama 3.
_END_OF_TURN = ("<|im_end|>", "<|end|>", "<|eot_id|>")


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (otherwise the dialogue format is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: Any, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
) -> str:
    """The prompt text for ``messages``: the chat template, or the EOS-joined dialogue format.

    Args:
        tokenizer: A transformers tokenizer.
        messages: ``{"role", "content"}`` dicts, oldest first (a system message may lead).
        add_generation_prompt: With a chat template, end with the assistant's turn header. The
            dialogue format has no headers: its text is the same either way.

    Returns:
        The text to tokenize with ``add_special_tokens=False``.

    Raises:
        ValueError: the tokenizer has neither a chat template nor an EOS token.

    Example:
        >>> render_chat(dialogpt_tokenizer, [{"role": "user", "content": "hi"}])
        'hi<|endoftext|>'
    """
    if has_chat_template(tokenizer):
        return str(
            tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError(
            "the tokenizer has no chat template and no EOS token, so companion cannot tell where "
            "a turn ends; pass a chat model or a dialogue model with an EOS token"
        )
    return "".join(f"{m['content']}{eos}" for m in messages)


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Token ids that end the assistant's turn.

    The tokenizer's EOS token, the model's ``generation_config.eos_token_id`` (one id or a
    list) and the end-of-turn tokens of common templates (``<|im_end|>``, Phi-3's ``<|end|>``,
    ``<|eot_id|>``) when the tokenizer has them as single tokens.
    """
    ids: set[int] = set()
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(i for i in configured if isinstance(i, int))
    for token in _END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(token)
        # Unknown tokens map to the unk id (or None); only a real single token counts.
        if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == token:
            ids.add(tid)
    return sorted(ids)
