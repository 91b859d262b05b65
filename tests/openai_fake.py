"""A tiny in-process HTTP server that speaks just enough of the chat-completions API to drive
:class:`~companion.models.OpenAIChatGenerator` into its edge cases (unit tests only; the
integration test uses a real ``transformers serve``).

Each request takes the next :class:`Plan` from the script (the last one repeats) and the
server records what it received and what became of the stream: how many chunks it wrote and
whether, and when, the client went away.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Plan:
    """What the server does with one request.

    ``kind``: ``"stream"`` (SSE of ``chunks``, ``delay`` seconds apart), ``"drop"`` (close
    the connection without a response), ``"status"`` (an error ``status`` whose JSON body
    quotes the request, as FastAPI's validation errors do), ``"stall"`` (wait ``delay``
    before answering), ``"break"`` (stream ``after`` chunks, then cut the connection without
    ending the body), ``"stall_after"`` (stream ``after`` chunks, then wait ``delay``).
    """

    kind: str = "stream"
    chunks: tuple[str, ...] = ("I hear ", "you.")
    delay: float = 0.0
    status: int = 500
    after: int = 0


def stream(*chunks: str, delay: float = 0.0) -> Plan:
    return Plan("stream", tuple(chunks), delay)


@dataclass
class Seen:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    written: int = 0  # content chunks written
    gone_at: float | None = None  # monotonic time the client was found gone
    finished: bool = False  # the whole planned stream went out


@dataclass
class FakeChatServer:
    """``with FakeChatServer([plan, ...]) as srv: srv.base_url``; ``srv.seen``: requests."""

    plans: list[Plan] = field(default_factory=lambda: [Plan()])
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked bodies: a cut stream is detectable

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                seen = Seen(body, {k.lower(): v for k, v in self.headers.items()})
                fake.seen.append(seen)
                plan = fake.plans[min(len(fake.seen) - 1, len(fake.plans) - 1)]
                fake._answer(self, plan, seen)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_gone(self, index: int = -1, timeout: float = 3.0) -> Seen:
        """The request at ``index`` once its client has gone (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.seen[index].gone_at is None:
            time.sleep(0.01)
        return self.seen[index]

    def _answer(self, h: BaseHTTPRequestHandler, plan: Plan, seen: Seen) -> None:
        if plan.kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if plan.kind == "stall":
            time.sleep(plan.delay)
        if plan.kind == "status":
            payload = json.dumps({"detail": [{"msg": "bad", "input": seen.body}]}).encode()
            h.send_response(plan.status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        try:
            self._event(h, {"role": "assistant"})
            for i, text in enumerate(plan.chunks):
                if plan.kind in ("break", "stall_after") and i == plan.after:
                    if plan.kind == "stall_after":
                        time.sleep(plan.delay)
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)  # the body never ends
                    return
                if plan.delay and plan.kind == "stream":
                    time.sleep(plan.delay)
                self._event(h, {"content": text})
                seen.written += 1
            self._event(h, {}, finish="stop")
            self._frame(h, b"data: [DONE]\n\n")
            self._frame(h, b"")
            seen.finished = True
        except (BrokenPipeError, ConnectionResetError):
            seen.gone_at = time.monotonic()
            h.close_connection = True

    def _event(self, h: BaseHTTPRequestHandler, delta: dict[str, str], finish: str | None = None):
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        self._frame(h, f"data: {json.dumps(chunk)}\n\n".encode())

    @staticmethod
    def _frame(h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()
