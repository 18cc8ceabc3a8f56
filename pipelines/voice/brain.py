"""The brain: chat messages in, a stream of text out, cancellable at any token.

`Generation` is the thread-safe handle the agent holds: the producer (an event loop or the LM
worker thread) `put`s text and `finish`es; the agent `drain`s on the engine thread and `cancel`s on
barge-in. Two brains:

- `EndpointBrain`: an OpenAI-compatible streaming chat endpoint (`--llm-url`: vLLM, SGLang,
  llama.cpp, Ollama). Requests run on the brain's own asyncio loop thread (never on the engine
  thread); cancelling closes the HTTP stream, which is how those servers stop generating.
- `LocalBrain` (streamserve.pipelines.voice.lm): a small in-process causal LM.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

Message = dict[str, str]


class BrainError(RuntimeError):
    """The brain cannot answer (endpoint down, bad reply). `code` is the typed error sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Generation:
    """One streamed reply. Producer side: put/finish (any thread). Consumer side: drain/cancel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: collections.deque[str] = collections.deque()
        self.text = ""  # everything produced so far
        self.finished = False
        self.error: BrainError | None = None
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._on_cancel: Callable[[], None] | None = None
        self._listener: Callable[[], None] | None = None

    # --- producer ---
    def put(self, delta: str) -> None:
        with self._lock:
            if self.finished:
                return
            self._parts.append(delta)
            self.text += delta
            listener = self._listener
        if listener is not None:
            listener()

    def finish(self, error: BrainError | None = None) -> None:
        with self._lock:
            if not self.finished:
                self.finished, self.error = True, error
            self._done.set()
            listener = self._listener
        if listener is not None:
            listener()

    def listen(self, fn: Callable[[], None]) -> None:
        """Call `fn` (on the producer's thread, no lock held) after each put and at the finish, so
        the consumer can act on new text at once instead of at its next poll."""
        with self._lock:
            self._listener = fn

    def on_cancel(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._on_cancel = fn
            cancelled = self.cancelled.is_set()
        if cancelled:
            fn()

    # --- consumer ---
    def drain(self) -> str:
        """The text produced since the last drain."""
        with self._lock:
            out = "".join(self._parts)
            self._parts.clear()
            return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or cancelled); False on timeout. Never call on the engine thread
        while serving (warm-up only)."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            fn = self._on_cancel
            self.finished = True
            self._done.set()
        if fn is not None:
            fn()


class Brain(Protocol):
    def start(self, messages: list[Message], max_tokens: int, key: str | None = None) -> Generation:
        """Begin a streamed reply to `messages` (never blocks). `key` names the conversation (a
        brain may keep state per key, e.g. a warm KV cache)."""
        ...

    def close(self) -> None: ...


def parse_sse_delta(line: str) -> str | None:
    """The text of one `data:` line of an OpenAI chat-completions stream ('' for none, None at [DONE])."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        body = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BrainError("llm_bad_reply", f"the endpoint sent a malformed stream line: {data[:80]!r}") from exc
    if "error" in body:
        raise BrainError("llm_error", f"the endpoint reported an error: {str(body['error'])[:200]}")
    choices = body.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


class EndpointBrain:
    """Streams from `{url}/chat/completions` (url like http://127.0.0.1:8080/v1) on its own loop thread."""

    def __init__(self, url: str, model: str = "default", api_key: str | None = None,
                 connect_timeout_s: float = 2.0, first_token_timeout_s: float = 10.0,
                 temperature: float = 0.3) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--llm-url must be an http(s) URL, got {url!r}")
        import httpx

        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._first_token_timeout_s = first_token_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="voice-llm-endpoint", daemon=True)
        self._thread.start()
        timeout = httpx.Timeout(connect=connect_timeout_s, read=first_token_timeout_s, write=5.0, pool=5.0)
        self._client = asyncio.run_coroutine_threadsafe(self._make_client(timeout), self._loop).result()
        self.active = 0  # streams open now (for tests and stats)

    async def _make_client(self, limits: object) -> object:
        import httpx

        return httpx.AsyncClient(timeout=limits)  # type: ignore[arg-type]

    def start(self, messages: list[Message], max_tokens: int, key: str | None = None) -> Generation:
        gen = Generation()
        fut = asyncio.run_coroutine_threadsafe(self._stream(gen, messages, max_tokens), self._loop)
        gen.on_cancel(lambda: None if fut.cancel() else None)
        return gen

    async def _stream(self, gen: Generation, messages: list[Message], max_tokens: int) -> None:
        import httpx

        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                "temperature": self.temperature}
        self.active += 1
        try:
            async with self._client.stream("POST", self.url, json=body, headers=self._headers) as resp:  # type: ignore[attr-defined]
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")[:200]
                    raise BrainError("llm_error", f"the endpoint answered HTTP {resp.status_code}: {text}")
                async for line in resp.aiter_lines():
                    delta = parse_sse_delta(line)
                    if delta is None:
                        break
                    if delta:
                        gen.put(delta)
            gen.finish()
        except asyncio.CancelledError:  # barge-in: leaving the `async with` closes the stream
            gen.finish()
            raise
        except BrainError as exc:
            gen.finish(exc)
        except httpx.HTTPError as exc:
            gen.finish(BrainError("llm_unavailable", f"the LLM endpoint {self.url} failed: "
                                  f"{type(exc).__name__}: {exc}"))
        except Exception as exc:
            log.exception("LLM endpoint stream failed")
            gen.finish(BrainError("llm_error", f"{type(exc).__name__}: {exc}"))
        finally:
            self.active -= 1

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def _shutdown() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await self._client.aclose()  # type: ignore[attr-defined]

        try:
            asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("LLM endpoint client did not close in time")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
