"""The training pipeline end to end on tiny fixture data, on CPU: prepare -> train -> evaluate,
the saved adapter changes the model, and a two-process DDP run (gloo) agrees across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-data")
    proc = run(
        "training/prepare_data.py",
        "--data_dir",
        str(FIXTURES / "shared-data"),
        "--style_dir",
        str(FIXTURES / "style"),
        "--output_dir",
        str(out),
        "--validation_share",
        "0.2",
        "--test_share",
        "0.2",
        "--seed",
        "3",
    )
    (out / "prepare_stderr.txt").write_text(proc.stderr)
    return out


def test_prepare_cleans_splits_and_reports(data: Path):
    stats = json.loads((data / "stats.json").read_text())
    splits = stats["splits"]
    assert splits["train"]["examples"] >= 4 and splits["test"]["examples"] >= 1
    assert stats["filters"]["advert_sentences_removed_from_answers"] == 1
    assert stats["filters"]["style_dialogues"] == 5
    sources = set().union(*(split["by_source"] for split in splits.values()))
    assert sources == {"style", "counsel-chat", "annomi"}
    progress = (data / "prepare_stderr.txt").read_text()  # stages and counts on stderr
    assert "[prepare_data] counsel-chat:" in progress and "guard filter" in progress
    assert "checking" in progress and "example" in progress
    groups = {
        name: {json.loads(line)["group"] for line in (data / f"{name}.jsonl").open()}
        for name in ("train", "validation", "test")
    }
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    for name in ("train", "validation", "test"):
        for line in (data / f"{name}.jsonl").open():
            ex = json.loads(line)
            assert ex["messages"][0]["role"] == "user"
            assert ex["messages"][-1]["role"] == "assistant"
            assert "free consultation" not in ex["messages"][-1]["content"]
            assert "http" not in ex["messages"][-1]["content"]


def test_loss_mask_covers_only_assistant_tokens():
    sys.path.insert(0, str(ROOT / "training"))
    from common import IGNORE_INDEX, encode_chat

    from companion.models import load_causal_lm

    _, tok = load_causal_lm()
    messages = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hi, how are you feeling?"},
    ]
    enc = encode_chat(tok, messages, max_length=512)
    assert enc is not None
    trained = [
        t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != IGNORE_INDEX
    ]
    text = tok.decode(trained)
    assert text.startswith("Hi, how are you feeling?") and "<|im_end|>" in text
    assert "hello there" not in text and "Companion" not in text  # no user or system tokens
    assert encode_chat(tok, messages, max_length=10) is None
    longer = [
        *messages,
        {"role": "user", "content": "tired"},
        {"role": "assistant", "content": "Tired how?"},
    ]

    def trained_text(last_only: bool) -> str:
        enc = encode_chat(tok, longer, 512, last_only)
        assert enc is not None
        pairs = zip(enc["input_ids"], enc["labels"], strict=True)
        return tok.decode([t for t, label in pairs if label != IGNORE_INDEX])

    both, last = trained_text(False), trained_text(True)
    assert "Hi, how are you feeling?" in both and "Tired how?" in both
    assert "Tired how?" in last and "Hi, how" not in last  # earlier replies are context only


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run(
        "training/train_sft.py",
        "--config",
        "training/configs/tiny-ci.yaml",
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
    )
    return out


def test_training_saves_adapter_summary_and_loss_plot(trained: Path):
    summary = json.loads((trained / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["precision"] == "fp32"
    assert summary["tokens_per_second"] > 0
    assert (trained / "adapter" / "adapter_config.json").is_file()
    assert (trained / "loss.png").stat().st_size > 1000


def test_saved_adapter_loads_and_changes_the_output(trained: Path):
    import torch

    from companion.models import load_causal_lm

    base, tok = load_causal_lm()
    tuned, _ = load_causal_lm(adapter=trained / "adapter", merge_adapter=True)
    ids = tok(
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        return_tensors="pt",
        add_special_tokens=False,
    )["input_ids"]
    with torch.inference_mode():
        diff = (base(input_ids=ids).logits - tuned(input_ids=ids).logits).abs().max().item()
    assert diff > 1e-4


def test_evaluate_compares_base_and_tuned(data: Path, trained: Path, tmp_path: Path):
    proc = run(
        "training/evaluate.py",
        "--adapter",
        str(trained / "adapter"),
        "--previous_adapter",
        str(trained / "adapter"),
        "--data_dir",
        str(data),
        "--prompts_file",
        str(FIXTURES / "eval_prompts.txt"),
        "--output_dir",
        str(tmp_path),
        "--max_new_tokens",
        "8",
        "--max_test_prompts",
        "1",
        "--batch_size",
        "2",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("base", "previous", "tuned"):
        m = metrics[name]
        assert m["replies"] == 3 and m["perplexity"] > 1
        assert 0 <= m["ended_on_own"] <= 1 and 0 <= m["guard_flagged"] <= 1
        assert 0 <= m["reflection_or_open_question"] <= 1 and 0 <= m["directive"] <= 1
    # the same adapter twice, seeded: the same replies
    assert metrics["previous"]["words_median"] == metrics["tuned"]["words_median"]
    assert metrics["prompts"] == {"fixed": 2, "heldout_conversations": 1}
    assert "[evaluate] base: perplexity" in proc.stderr and "tuned: generating" in proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| metric | base | previous | tuned | target (tuned) |" in report
    assert "**User:**" in report
    rows = [json.loads(line) for line in (tmp_path / "replies.jsonl").open()]
    assert len(rows) == 3 and {"base", "previous", "tuned", "conversation"} <= set(rows[0])


def test_ddp_two_processes_on_cpu_agree(data: Path, tmp_path: Path):
    run(
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "training/train_sft.py",
        "--config",
        "training/configs/tiny-ci.yaml",
        "--ddp_backend",
        "gloo",
        "--data_dir",
        str(data),
        "--output_dir",
        str(tmp_path),
    )
    digests = [(tmp_path / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["world_size"] == 2
