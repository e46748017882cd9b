"""Where translations come from, behind one small interface: `await backend.ask(prompt, max_tokens)`
gives an `Answer` (its text, and whether the token budget ended it) or raises `RequestFailed` (the
record is rejected for this run and asked again on the next); an endpoint that refuses every request
(bad key, unknown model) stops the run (UserError).

- `OpenAIBackend`: any OpenAI-compatible chat-completions endpoint, with bounded concurrency,
  timeouts, and retries with exponential backoff on 429, 5xx, timeouts, dropped connections and
  bodies that are not the JSON of an answer; a `Retry-After` header sets the wait instead (at most
  MAX_RETRY_AFTER_S).
- `LocalBackend`: an oie-jax model directory in this process; concurrent asks share generation
  batches (the batcher of `oie-jax serve`).
"""

import asyncio
import dataclasses
import email.utils
import json
import os
import time

import aiohttp

from oie_jax.errors import UserError

GREEDY = {"temperature": 0.0}
FATAL_STATUSES = (401, 403, 404)  # no request can succeed: stop the run
MAX_RETRY_AFTER_S = 60.0  # the longest wait a server's Retry-After gets


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    truncated: bool = False  # the token budget ended it (finish_reason "length"), not the model


def sampling(max_tokens: int) -> dict:
    """The request's sampling fields, which are part of the answer's cache key."""
    return {**GREEDY, "max_tokens": max_tokens}


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), bounded; None without one."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RequestFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class OpenAIBackend:
    def __init__(self, endpoint: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 512,
                 concurrency: int = 8, timeout_s: float = 120.0, retries: int = 5, backoff_s: float = 1.0):
        self.name, self.model, self.max_tokens = f"openai:{endpoint.rstrip('/')}", model, max_tokens
        self.served = model  # the model as the answer cache keys it (`served_model`, once the session opens)
        self.url, self.models_url = endpoint.rstrip("/") + "/chat/completions", endpoint.rstrip("/") + "/models"
        self.concurrency, self.timeout_s, self.retries, self.backoff_s = concurrency, timeout_s, retries, backoff_s
        key = os.environ.get(api_key_env)  # never a flag or a file: keys stay out of shell history and repos
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # HTTP requests sent, retries included

    async def __aenter__(self):
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              connector=aiohttp.TCPConnector(limit=self.concurrency))
        self.served = await self.served_model()
        return self

    async def served_model(self) -> str:
        """The model as the cache keys it: its name, and what the endpoint's /models says it serves under
        that name (`root`: oie-jax serve's weights fingerprint, vLLM's model path), when it says so."""
        try:
            async with self._session.get(self.models_url, headers=self._headers) as response:
                entries = (await response.json(content_type=None)).get("data", []) if response.status == 200 else []
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            entries = []
        root = next((e.get("root") for e in entries if isinstance(e, dict) and e.get("id") == self.model), None)
        return f"{self.model} ({root})" if root else self.model

    async def __aexit__(self, *exc):
        await self._session.close()

    async def ask(self, prompt: str, max_tokens: int) -> Answer:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], **sampling(max_tokens)}
        problem, wait = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) if wait is None else wait)
            self.requests += 1
            try:
                async with self._session.post(self.url, json=body, headers=self._headers) as response:
                    text = await response.text()
                    status = response.status
                    wait = retry_after(response.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem, wait = f"{type(exc).__name__} {exc}".strip(), None
                continue
            if status in FATAL_STATUSES:
                raise UserError(f"{self.url} answered {status}: {_message(text)} (check --endpoint, --model and the "
                                "API key variable)")
            if status == 429 or status >= 500:
                problem = f"HTTP {status}: {_message(text)}"
                continue
            if status >= 400:  # this request is refused (too long, ...): the record, not the run
                raise RequestFailed("request_refused", f"HTTP {status}: {_message(text)}")
            try:
                choice = json.loads(text)["choices"][0]
                return Answer(choice["message"]["content"], choice.get("finish_reason") == "length")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                problem = f"not the JSON of a chat completion: {text[:80]!r}"
        raise RequestFailed("request_failed", f"{problem} (after {self.retries + 1} attempts)")


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return text[:200]


class LocalBackend:
    """An oie-jax model directory, greedy, in this process."""

    def __init__(self, model_dir, max_tokens: int = 512, batch_size: int = 16):
        from oie_jax.infer.serve import Limits, Server

        self.server = Server.from_directory(model_dir, limits=Limits(batch_size=batch_size, max_queue=1 << 20,
                                                                     max_tokens=max_tokens))
        self.name, self.model, self.max_tokens = f"local:{model_dir}", self.server.name, max_tokens
        self.served = f"{self.model} ({self.server.weights})"  # other weights in the same directory: other answers
        self.concurrency = 2 * batch_size  # one batch generating, the next one queued
        self.requests = 0

    async def __aenter__(self):
        self.server.batcher.start()
        return self

    async def __aexit__(self, *exc):
        await asyncio.get_running_loop().run_in_executor(None, self.server.batcher.stop)

    async def ask(self, prompt: str, max_tokens: int) -> Answer:
        from oie_jax.infer.generate import Sampling

        self.requests += 1
        ids = self.server.chat_tokens([{"role": "user", "content": prompt}])
        if len(ids) + max_tokens > self.server.model.cfg.max_position_embeddings:
            raise RequestFailed("request_refused", f"{len(ids)} prompt tokens + {max_tokens} exceed the context")
        [(text, finish, _)] = await self.server.generate([ids], max_tokens, Sampling())
        return Answer(text, finish == "length")
