"""A real local HTTP server speaking the OpenAI streaming chat format, for the voice tests.

It answers from the last user message (a fact it knows, else a restatement of what it heard), one
word per `delay_s`, as `data: {...}` server-sent events, and records every request and every client
that went away before the end of its stream (what closing the stream on barge-in must cause).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FACTS = {
    "france": "The capital of France is Paris, a city on the Seine.",
    "spider": "A spider has eight legs.",
    "sky": "The sky looks blue because air scatters blue light the most.",
}


def answer_for(text: str, long: bool = False) -> str:
    low = text.lower()
    reply = next((a for k, a in FACTS.items() if k in low), f"You said {text.strip().rstrip('.?!')}.")
    if long or "everything" in low:
        reply += " " + " ".join(["Let me tell you more about that, since there is a lot to say."] * 8)
    return reply


class FakeLLM:
    def __init__(self, delay_s: float = 0.02, long: bool = False) -> None:
        self.delay_s = delay_s
        self.long = long
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.completed = 0
        self.active = 0
        self.changed = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.requests.append(body)
                if self.path != "/v1/chat/completions" or not body.get("stream"):
                    self.send_error(404)
                    return
                user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                words = answer_for(user, outer.long).split(" ")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                with outer.changed:
                    outer.active += 1
                try:
                    for i, word in enumerate(words):
                        chunk = {"choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(outer.delay_s)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    outer._count("completed")
                except (BrokenPipeError, ConnectionResetError):
                    outer._count("disconnects")
                finally:
                    with outer.changed:
                        outer.active -= 1
                        outer.changed.notify_all()
                    self.close_connection = True

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._sock.close()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, name: str) -> None:
        with self.changed:
            setattr(self, name, getattr(self, name) + 1)
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
