"""The ``companion`` command: chat in a terminal, classify text, (later) serve gRPC."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .types import Action, Verdict

__all__ = ["main"]


def _quiet_libraries() -> None:
    # Keep third-party progress bars out of the terminal. Only the entry point does this.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {
        "category": v.category.value,
        "scores": dict(v.scores),
        "thresholds": dict(v.thresholds),
        "policy_version": v.policy_version,
    }


def _cmd_classify(args: argparse.Namespace) -> int:
    from .safety import ClassifyItem, SafetyClassifier
    from .types import Role

    clf = SafetyClassifier.from_defaults(None if args.encoder is None else _encoder(args.encoder))
    if args.input:
        with open(args.input, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        items = [
            ClassifyItem(r["text"], Role(r.get("role", "user")), tuple(r.get("context", ())))
            for r in rows
        ]
        lines = [
            json.dumps({**row, **_verdict_json(verdict)}, ensure_ascii=False) + "\n"
            for row, verdict in zip(rows, clf.classify_batch(items), strict=True)
        ]
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                out.writelines(lines)
        else:
            sys.stdout.writelines(lines)
        return 0
    if args.text is None:
        print("companion classify: give TEXT or --input FILE", file=sys.stderr)
        return 2
    verdict = clf.classify(args.text, args.role, args.context or ())
    print(json.dumps(_verdict_json(verdict)))
    return 0


def _encoder(name: str) -> Any:
    from .models import load_encoder

    return load_encoder(name)


def _cmd_chat(args: argparse.Namespace) -> int:
    from . import Companion, GenerationConfig, PipelineConfig

    print(
        "Loading models (the first run converts the embedded model, about a minute)...",
        file=sys.stderr,
    )
    config = PipelineConfig(generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    companion = Companion.from_defaults(
        "memory" if args.memory else "sqlite",
        model=args.model,
        adapter=args.adapter,
        db_path=args.db,
        config=config,
    )
    with companion:
        session = companion.start_session(locale=args.locale)
        print(
            f"Companion ({args.locale}). A wellness companion, not a therapist or a doctor.\n"
            "Type a message and press Enter; Ctrl-D to leave.\n",
            file=sys.stderr,
        )
        prompt = "you> " if sys.stdin.isatty() else ""  # piped input: keep stdout to replies
        while True:
            try:
                text = input(prompt)
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                break
            if not text.strip():
                continue
            reply = session.send(text)
            tag = (
                f" [redirected: {reply.category.value}]"
                if reply.action is Action.REDIRECTED
                else ""
            )
            print(f"companion{tag}> {reply.text}\n", flush=True)
        if not args.memory:
            print(f"Session {session.id} is kept in the session store.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``companion`` command."""
    parser = argparse.ArgumentParser(prog="companion", description=__doc__)
    parser.add_argument("--log-level", default="warning", help="structlog level (default: warning)")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat in the terminal through the guarded pipeline")
    chat.add_argument("--locale", default="en-US", help="language tag, picks resources (en-GB...)")
    chat.add_argument("--memory", action="store_true", help="keep the session in memory only")
    chat.add_argument("--db", default=None, help="SQLite session file (default: user data dir)")
    chat.add_argument("--model", default=None, help="base model dir or hub id (default: embedded)")
    chat.add_argument("--adapter", default=None, help="PEFT adapter directory")
    chat.add_argument("--max-new-tokens", type=int, default=160)
    chat.set_defaults(func=_cmd_chat)

    cls = sub.add_parser("classify", help="print the safety verdict of a text as JSON")
    cls.add_argument("text", nargs="?", help="text to classify")
    cls.add_argument("--role", default="user", choices=["user", "assistant"])
    cls.add_argument("--context", nargs="*", help="earlier user turns, oldest first")
    cls.add_argument("--input", help="JSONL file: one {text, role?, context?} per line")
    cls.add_argument("--output", help="JSONL output file (default: stdout)")
    cls.add_argument(
        "--encoder", default=None, help="sentence-transformers path (default: embedded)"
    )
    cls.set_defaults(func=_cmd_classify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``companion`` console script."""
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    from ._logging import configure_logging

    configure_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
