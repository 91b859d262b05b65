"""The ``companion`` command: chat in a terminal, classify text, serve gRPC, run evaluations."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import __version__
from ._logging import LEVELS
from .config import GenerationConfig
from .types import Action, Reply, Verdict

__all__ = ["main"]


def _quiet_libraries() -> None:
    # Keep third-party progress bars out of the terminal. Only the entry point does this.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {
        "category": v.category.value,
        "action": v.decision.value,
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
            ClassifyItem(
                r["text"],
                Role(r.get("role", "user")),
                tuple(r.get("context", ())),
                r.get("last_assistant", "") or "",
            )
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
    verdict = clf.classify(args.text, args.role, args.context or (), args.last_assistant or "")
    print(json.dumps(_verdict_json(verdict)))
    return 0


def _encoder(name: str) -> Any:
    from .models import load_encoder

    return load_encoder(name)


_LEAVE = ("/quit", "/exit")  # typed alone, leave the chat instead of being sent


def _chat_loop(stream: Callable[[str], Iterator[Any]]) -> None:
    """Read lines, stream each reply: checked units as they are released; a redirect or
    check-in (no generated text) is printed whole with its tag; a withheld reply is marked and
    followed by the fixed message that replaced it."""
    from .pipeline import TextDelta, TurnDone, Withheld

    prompt = "you> " if sys.stdin.isatty() else ""  # piped input: keep stdout to replies
    while True:
        try:
            text = input(prompt)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            break
        if not text.strip():
            continue
        if text.strip() in _LEAVE:
            break
        shown = False
        for event in stream(text):
            if isinstance(event, TextDelta):
                print(event.text if shown else f"companion> {event.text}", end="", flush=True)
                shown = True
            elif isinstance(event, Withheld) and shown:
                print("\n[withheld by the reply check]", flush=True)
                shown = False
            elif isinstance(event, TurnDone):
                reply: Reply = event.reply
                if shown:
                    print("\n", flush=True)
                    continue
                tag = {
                    Action.REDIRECTED: f" [redirected: {reply.category.value}]",
                    Action.CHECKED_IN: " [check-in]",
                }.get(reply.action, "")
                print(f"companion{tag}> {reply.text}\n", flush=True)


def _cmd_chat_remote(args: argparse.Namespace) -> int:
    from .client import CompanionClient
    from .errors import CompanionError

    api_key = args.api_key or os.environ.get("COMPANION_API_KEY") or None
    try:
        client = CompanionClient(
            args.server,
            api_key=api_key,
            tls=args.tls,
            root_ca=args.tls_ca,
            client_cert=args.tls_cert,
            client_key=args.tls_key,
        )
    except (OSError, ValueError) as exc:
        print(f"companion chat: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            client.wait_ready(timeout=args.wait)
            sid = client.create_session(locale=args.locale)
        except CompanionError as exc:
            print(f"companion chat: {args.server}: {exc}", file=sys.stderr)
            return 1
        print(
            f"Companion at {args.server} ({args.locale}). A wellness companion, not a therapist"
            " or a doctor.\nType a message and press Enter; Ctrl-D or /quit to leave.\n",
            file=sys.stderr,
        )
        _chat_loop(lambda text: client.stream(sid, text))
        print(f"Session {sid} is kept on the server.", file=sys.stderr)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from . import Companion, GenerationConfig, PipelineConfig

    if args.server:
        return _cmd_chat_remote(args)
    print(
        "Loading models (the first run converts the embedded model, about a minute)...",
        file=sys.stderr,
    )
    from .models._threads import set_torch_threads

    set_torch_threads(None)
    config = PipelineConfig(
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, seed=args.seed)
    )
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
            "Type a message and press Enter; Ctrl-D or /quit to leave.\n",
            file=sys.stderr,
        )
        _chat_loop(session.stream)
        if not args.memory:
            print(f"Session {session.id} is kept in the session store.", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ._logging import configure_logging
    from .errors import ModelLoadError
    from .server import CompanionServer, ServerSettings, serve
    from .server._transport import exposure_problem
    from .server.settings import unknown_env_names

    try:
        settings = ServerSettings.from_file(args.config) if args.config else ServerSettings()
        settings = ServerSettings.from_env(base=settings).replace(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            insecure=args.insecure,
        )
    except (OSError, ValueError) as exc:
        print(f"companion serve: {exc}", file=sys.stderr)
        return 2
    problem = exposure_problem(settings)
    if problem is not None:
        print(f"companion serve: {problem}", file=sys.stderr)
        return 2
    try:
        configure_logging(args.log_level or settings.log_level)
    except ValueError as exc:
        print(f"companion serve: {exc}", file=sys.stderr)
        return 2
    unknown = unknown_env_names()
    if unknown:  # a typo would leave the default in force without a word
        print(
            f"companion serve: ignoring {', '.join(unknown)}: not a setting "
            "(README, 'gRPC service')",
            file=sys.stderr,
        )
    me = sys.argv[0] if os.path.basename(sys.argv[0]) == "companion" else "companion"
    transport = {"off": "plaintext", "tls": "TLS", "mtls": "mutual TLS"}[settings.tls]
    # How a client reaches it: plaintext, or TLS with the CA that signed the server's cert.
    chat_tls = grpcurl_tls = client_tls = ""
    if settings.tls != "off":
        chat_tls, grpcurl_tls = " --tls-ca CA.pem", "-cacert CA.pem"
        client_tls = ', root_ca="CA.pem"'
        if settings.tls == "mtls":
            chat_tls += " --tls-cert CLIENT.pem --tls-key CLIENT.key"
            grpcurl_tls += " -cert CLIENT.pem -key CLIENT.key"
            client_tls += ', client_cert="CLIENT.pem", client_key="CLIENT.key"'

    def listening(server: CompanionServer) -> None:
        metrics = (
            f"; metrics at http://{settings.metrics_host}:{server.metrics_port}/metrics"
            if server.metrics_port is not None
            else ""
        )
        auth = "API keys required" if settings.api_keys else "no authentication"
        print(
            f"companion: gRPC on {server.address} ({transport}, {auth}){metrics}\n"
            "Loading models (the first run converts the embedded model, about a minute); "
            "health is NOT_SERVING until they are ready...",
            file=sys.stderr,
            flush=True,
        )

    def ready(server: CompanionServer) -> None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "[::]") else settings.host
        target = f"{host}:{server.port}"
        print(
            f"Ready (health SERVING). Talk to it:\n"
            f"  {me} chat --server {target}{chat_tls}\n"
            f'  grpcurl {grpcurl_tls or "-plaintext"} -d \'{{"locale": "en-US"}}\' {target} '
            "companion.v1.CompanionService/CreateSession\n"
            f"  python -c 'from companion.client import CompanionClient; "
            f'cl = CompanionClient("{target}"{client_tls}); '
            f'print(cl.send(cl.create_session(), "hello").text)\'\n'
            f"Ctrl-C stops it (in-flight turns get {settings.grace_seconds:g} s to finish).",
            file=sys.stderr,
            flush=True,
        )

    try:
        asyncio.run(serve(settings, on_listening=listening, on_ready=ready))
    except ModelLoadError as exc:
        print(f"companion serve: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # a port is taken, a TLS file unreadable: named
        print(f"companion serve: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``companion`` command."""
    parser = argparse.ArgumentParser(prog="companion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=LEVELS,
        help="log level on stderr (default: warning; serve: info or its log_level setting)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat in the terminal through the guarded pipeline")
    chat.add_argument("--locale", default="en-US", help="language tag, picks resources (en-GB...)")
    chat.add_argument("--memory", action="store_true", help="keep the session in memory only")
    chat.add_argument("--db", default=None, help="SQLite session file (default: user data dir)")
    chat.add_argument("--model", default=None, help="base model dir or hub id (default: embedded)")
    chat.add_argument(
        "--adapter", default="shipped", help="PEFT adapter dir; 'shipped' (default) or 'none'"
    )
    chat.add_argument(
        "--max-new-tokens",
        type=int,
        default=GenerationConfig.max_new_tokens,
        help="reply length cap in tokens, in-process (default: %(default)s, as serve)",
    )
    chat.add_argument(
        "--seed", type=int, default=None, help="sampling seed for reproducible replies (in-process)"
    )
    chat.add_argument("--server", default=None, help="chat through a gRPC server at HOST:PORT")
    chat.add_argument(
        "--api-key", default=None, help="with --server: API key (default: $COMPANION_API_KEY)"
    )
    chat.add_argument(
        "--wait", type=float, default=300.0, help="with --server: seconds to wait for SERVING"
    )
    chat.add_argument(
        "--tls", action="store_true", help="with --server: TLS with the system's CA certificates"
    )
    chat.add_argument("--tls-ca", default=None, help="with --server: TLS, the server's CA (PEM)")
    chat.add_argument(
        "--tls-cert", default=None, help="with --server: client certificate for mutual TLS (PEM)"
    )
    chat.add_argument("--tls-key", default=None, help="with --server: its private key (PEM)")
    chat.set_defaults(func=_cmd_chat)

    srv = sub.add_parser(
        "serve",
        help="run the gRPC service (settings: --config FILE, COMPANION_* variables, flags)",
    )
    srv.add_argument("--host", default=None, help="interface (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="gRPC port (default: 50051)")
    srv.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (default: 9464)"
    )
    srv.add_argument(
        "--metrics-host", default=None, help="Prometheus interface (default: 127.0.0.1)"
    )
    srv.add_argument("--tls-cert", default=None, help="TLS: the server's certificate chain (PEM)")
    srv.add_argument("--tls-key", default=None, help="TLS: the server's private key (PEM)")
    srv.add_argument(
        "--tls-client-ca",
        default=None,
        help="mutual TLS: require client certificates signed by this CA (PEM)",
    )
    srv.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        default=None,
        help="allow a non-loopback --host without TLS or API keys (TLS ends in front)",
    )
    srv.add_argument("--config", default=None, help="TOML or YAML settings file")
    srv.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,  # keeps a `companion --log-level X serve` given before it
        choices=LEVELS,
        help="log level (default: the log_level setting, info)",
    )
    srv.set_defaults(func=_cmd_serve)

    cls = sub.add_parser("classify", help="print the safety verdict of a text as JSON")
    cls.add_argument("text", nargs="?", help="text to classify")
    cls.add_argument("--role", default="user", choices=["user", "assistant"])
    cls.add_argument("--context", nargs="*", help="earlier user turns, oldest first")
    cls.add_argument(
        "--last-assistant",
        help="the companion's previous message when it was the check-in question (TEXT answers it)",
    )
    cls.add_argument(
        "--input", help="JSONL file: one {text, role?, context?, last_assistant?} per line"
    )
    cls.add_argument("--output", help="JSONL output file (default: stdout)")
    cls.add_argument(
        "--encoder", default=None, help="sentence-transformers path (default: embedded)"
    )
    cls.set_defaults(func=_cmd_classify)

    from ._eval_cmd import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``companion`` console script."""
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    from ._logging import configure_logging

    configure_logging(args.log_level or "warning")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
