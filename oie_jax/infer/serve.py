"""An OpenAI-compatible HTTP server for an oie-jax model (`oie-jax serve`).

Request handlers (aiohttp, one event loop) check a request, tokenize it and queue one job per
prompt; one thread owns the model and takes every job waiting (up to the batch size) into a
generation batch, one `generate` call per kind of sampling. Requests that arrive while a batch
runs share the next one. The queue is bounded (429 when full), request bodies too (413), and
SIGTERM stops taking requests, finishes the ones accepted and exits.
"""

import asyncio
import dataclasses
import functools
import itertools
import json
import queue
import secrets
import signal
import threading
import time
import uuid

import numpy as np
from aiohttp import web

from oie_jax.data.images import prepare
from oie_jax.errors import UserError
from oie_jax.infer import generate as gen
from oie_jax.infer.chat import checked_messages, load_chat_template, read_image_url

SAMPLING_FIELDS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
                   "user", "stream", "stream_options")
FIELDS = {"completions": ("prompt", "oie", *SAMPLING_FIELDS), "chat": ("messages", "oie", *SAMPLING_FIELDS)}
# Fields a client may send with the value that changes nothing (OpenAI's defaults); any other value, or
# a field in neither list (tools, logprobs, response_format, ...), gets a 400 naming it.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "echo": False, "best_of": 1}
MAX_N = 16  # choices per request


@dataclasses.dataclass(frozen=True)
class Limits:
    batch_size: int = 16  # rows of one generation batch
    max_queue: int = 64  # prompts waiting for a batch; more gets 429
    max_request_bytes: int = 1 << 20  # a larger body gets 413
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    batch_wait_s: float = 0.005  # after the first job of a batch, how long to wait for companions


@dataclasses.dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    sampling: gen.Sampling
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    constraints: gen.Constraints | None = None  # an `oie` request's: its output automaton, over the vocabulary
    stream: object = None  # a streamed request's `(step, token)` callback (called in the generation thread)
    salt: int = 0  # the choice's index in its request: its draw is fold_in(key(seed), salt), whatever its batch
    cancelled: bool = False  # its client went away: dropped if it has not started
    stop: tuple[str, ...] = ()  # stop strings: the row ends at the step that completes one
    image: np.ndarray | None = None  # a multimodal model's prepared picture, read at the prompt's placeholders

    def settle(self, result=None, error: BaseException | None = None) -> None:
        def set_it():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(result)

        self.loop.call_soon_threadsafe(set_it)


class QueueFull(Exception):
    pass


class Batcher:
    """The thread that owns the model. `batches` counts generation batches (compiled program calls)."""

    def __init__(self, model, tokenizer, limits: Limits):
        self.model, self.limits, self.tokenizer = model, limits, tokenizer
        self.eos_ids = gen.stop_ids(gen.text_model(model).cfg, tokenizer)
        self.jobs: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self.requests = self.batches = self.dropped = 0  # dropped: jobs whose client left before they started
        self._thread = threading.Thread(target=self._run, name="oie-jax-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finishes the jobs queued so far, then ends the thread."""
        self.jobs.put(None)
        self._thread.join()

    def submit(self, jobs: list[Job], new_request: bool = True) -> None:
        """Queues all of `jobs` or none (QueueFull)."""
        with self.jobs.mutex:  # the check and the puts as one step: a request is never half queued
            if self.jobs.maxsize - len(self.jobs.queue) < len(jobs):
                raise QueueFull
        for job in jobs:
            self.jobs.put_nowait(job)
        self.requests += new_request

    def _take(self) -> tuple[list[Job], bool]:
        """The next batch: the first job waited for, then whatever arrives within batch_wait_s."""
        first = self.jobs.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self.limits.batch_wait_s
        while len(batch) < self.limits.batch_size:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch, False

    def _run(self) -> None:
        while True:
            batch, stopping = self._take()
            live = [job for job in batch if not job.cancelled]
            self.dropped += len(batch) - len(live)
            batch = live
            if stopping:
                return
            # Seeds do not split batches: each row draws from its own key (`generate`'s row_seeds).
            kind = lambda j: (repr(dataclasses.replace(j.sampling, seed=0)), j.constraints is not None,  # noqa: E731
                              j.image is not None)
            for _, group in itertools.groupby(sorted(batch, key=kind), key=kind):
                group = list(group)
                self._generate(group[0].sampling, group)

    def _generate(self, sampling: gen.Sampling, jobs: list[Job]) -> None:
        constrained = jobs[0].constraints is not None
        made_so_far = [[] for _ in jobs]

        def on_tokens(indices, step, made):
            """Each streamed job's token as it is made; True for the rows whose text now holds a stop string."""
            stops = []
            for i, token in zip(indices, made):
                job = jobs[i]
                if job.stream is not None:
                    job.stream(step, int(token))
                ended = False
                if job.stop and step < job.max_tokens:
                    made_so_far[i].append(int(token))
                    text = self.tokenizer.decode(made_so_far[i], skip_special_tokens=True)
                    ended = any(stop in text for stop in job.stop)
                stops.append(ended)
            return stops

        streamed = any(job.stream is not None or job.stop for job in jobs)
        try:
            constraints = dataclasses.replace(jobs[0].constraints, automata=[
                auto for job in jobs for auto in job.constraints.automata]) if constrained else None
            # Each job its own budget (an `oie` job's is part of its constraint), in one compiled program.
            outputs = gen.generate(self.model, [job.prompt for job in jobs], [job.max_tokens for job in jobs], sampling,
                                   eos_ids=self.eos_ids, batch_size=self.limits.batch_size, constraints=constraints,
                                   on_tokens=on_tokens if streamed else None,
                                   row_seeds=[(job.sampling.seed, job.salt) for job in jobs],
                                   images=None if jobs[0].image is None else np.stack([job.image for job in jobs]))
        except Exception as exc:  # the server keeps serving; a failing row fails only its own request
            if len(jobs) == 1:
                jobs[0].settle(error=exc)
            else:
                for job in jobs:
                    self._generate(sampling, [job])
            return
        finally:
            self.batches += -(-len(jobs) // self.limits.batch_size)
        for job, tokens in zip(jobs, outputs):
            job.settle(tokens)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": status}},
                             status=status)


@web.middleware
async def openai_errors(request, handler):
    """Every failure as OpenAI's error object: {"error": {"message", "type", "code"}}."""
    try:
        return await handler(request)
    except HTTPError as exc:
        return error_response(exc.status, str(exc), exc.kind, exc.param)
    except UserError as exc:
        return error_response(400, str(exc))
    except web.HTTPException as exc:  # aiohttp's own: 404 unknown path, 405, 413 body too large
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason if exc.status != 413 else
                              f"request body over {request.app['server'].limits.max_request_bytes:,} bytes",
                              "request_too_large" if exc.status == 413 else "invalid_request_error")
    except Exception as exc:  # a bug or a failed generation: still an error object, and the server goes on
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


class Server:
    def __init__(self, model, tokenizer, name: str, limits: Limits = Limits(), chat_template=None,
                 model_dir=None, label_sets: dict | None = None, budget: int = 128, preprocess=None):
        """`preprocess`: a multimodal model's image preparation (its `oie` requests then read an image)."""
        self.model, self.tokenizer, self.name, self.limits = model, tokenizer, name, limits
        self.text_cfg = gen.text_model(model).cfg  # the LLaMA's: vocabulary and context
        self.preprocess = preprocess
        self.chat_template, self.model_dir = chat_template, model_dir
        self.label_sets, self.budget = label_sets or {}, budget  # what `oie` requests decode with by default
        self.batcher = Batcher(model, tokenizer, limits)
        self.created = int(time.time())

    @classmethod
    def from_directory(cls, model_dir, name: str | None = None, limits: Limits = Limits(), dtype=None) -> "Server":
        from etils import epath

        from oie_jax.data.labels import model_label_sets
        from oie_jax.infer.budget import model_budget
        from oie_jax.infer.predict import load_for_generation
        from oie_jax.models import multimodal_dir

        model, tokenizer, preprocess = load_for_generation(model_dir, dtype)
        return cls(model, tokenizer, name or epath.Path(model_dir).name, limits,
                   load_chat_template(multimodal_dir.text_dir(model_dir)),
                   model_dir, model_label_sets(model_dir, None), model_budget(model_dir), preprocess)

    @functools.cached_property
    def weights(self) -> str | None:
        """A fingerprint of the weights (`weights_fingerprint`: reads every byte), when served from a directory."""
        from oie_jax.models.directory import weights_fingerprint

        return None if self.model_dir is None else weights_fingerprint(self.model_dir)

    @functools.cached_property
    def vocabulary(self) -> gen.Constraints:
        """The vocabulary's token bytes and trie for `oie` requests (no automaton), built at the first one."""
        return gen.Constraints.of([], self.tokenizer, self.text_cfg.vocab_size)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_request_bytes, middlewares=[openai_errors])
        app["server"] = self
        app.add_routes([web.get("/health", self.health), web.get("/v1/models", self.models),
                        web.post("/v1/completions", self.completions),
                        web.post("/v1/chat/completions", self.chat_completions)])
        return app

    async def health(self, request):
        return web.json_response({"status": "ok", "model": self.name, "requests": self.batcher.requests,
                                  "batches": self.batcher.batches, "queued": self.batcher.jobs.qsize(),
                                  "dropped": self.batcher.dropped})

    async def models(self, request):
        entry = {"id": self.name, "object": "model", "created": self.created, "owned_by": "oie-jax"}
        weights = await asyncio.get_running_loop().run_in_executor(None, lambda: self.weights)  # read once
        if weights:  # `root` names what is served (vLLM puts the model's path there)
            entry["root"] = weights
        return web.json_response({"object": "list", "data": [entry]})

    async def completions(self, request):
        body = await self._body(request, "completions")
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        if "oie" in body:
            return web.json_response(await self.extract("text_completion", "cmpl", prompts, body))
        ids = self.tokenizer.encode_batch(prompts, add_special_tokens=True)
        if body.get("stream"):
            return await self.stream(request, "text_completion", "cmpl", ids, body)
        results = await self._run(ids, body)
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason, _) in enumerate(results)]
        return web.json_response(self._reply("text_completion", "cmpl", choices, ids, results))

    async def chat_completions(self, request):
        body = await self._body(request, "chat")
        if self.chat_template is None:
            raise HTTPError(400, f"model {self.name} has no chat template in its tokenizer files; "
                                 "use /v1/completions")
        messages = checked_messages(body.get("messages"))
        images = [url for message in messages for url in message.get("images", ())]
        if images and ("oie" not in body or len(images) > 1 or not messages[-1].get("images")):
            raise HTTPError(400, "an image is read by an 'oie' request, one, in its last message (the training "
                                 "layout: the picture, then the text)", param="messages")
        if "oie" in body:  # the last message is the text; the answer is `oie-jax extract`'s
            return web.json_response(await self.extract("chat.completion", "chatcmpl", [messages[-1]["content"]],
                                                        body, image=images[0] if images else None))
        ids = [self.chat_tokens(messages)]
        if body.get("stream"):
            return await self.stream(request, "chat.completion", "chatcmpl", ids, body)
        results = await self._run(ids, body)
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason, _) in enumerate(results)]
        return web.json_response(self._reply("chat.completion", "chatcmpl", choices, ids, results))

    async def extract(self, kind: str, prefix: str, texts: list[str], body: dict, image: str | None = None) -> dict:
        """`oie-jax extract` through the server: each text with the `oie` field's task as the prompt (the
        training layout, not a chat), greedy, constrained to the format with the model's label sets (or
        the request's; "constrained": false decodes freely), at most the model's generation budget (or
        max_tokens); each choice carries the extraction (label, items, spans) beside the text. `image` (an
        image_url's URL) is the picture a multimodal model reads the texts with."""
        from oie_jax.data import format as fmt
        from oie_jax.data.format import Record
        from oie_jax.data.labels import parse_label_sets
        from oie_jax.infer.extract import read_output
        from oie_jax.infer.predict import prompt_tokens, record_automata

        spec = body["oie"]
        if not isinstance(spec, dict) or spec.get("task") not in fmt.TASKS:
            raise HTTPError(400, f"'oie' must be an object with a task, one of {', '.join(fmt.TASKS)}", param="oie")
        if body.get("n", 1) != 1 or body.get("temperature", 0) != 0 or "stop" in body or body.get("stream"):
            raise HTTPError(400, "an 'oie' request decodes greedily, once, whole: no n, temperature, stop or stream",
                            param="oie")
        task, constrained = spec["task"], spec.get("constrained", True)
        try:
            sets = parse_label_sets(spec["labels"], "the 'oie' labels") if "labels" in spec else self.label_sets
        except UserError as exc:
            raise HTTPError(400, str(exc), param="oie") from None
        records = [Record(text=text, task=task) for text in texts]
        picture, placeholders = None, None
        if image is not None:
            if self.preprocess is None:
                raise HTTPError(400, f"model {self.name} has no vision encoder: send text parts only", param="messages")
            try:
                picture = prepare(read_image_url(image), self.preprocess)[0]
            except UserError as exc:
                raise HTTPError(400, str(exc), param="messages") from None
            placeholders = (self.model.cfg.image_token_id, self.model.image_tokens(picture.shape))
        prompts = prompt_tokens(records, self.tokenizer, placeholders)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", self.budget))
        if type(max_tokens) is not int or not 1 <= max_tokens <= self.limits.max_tokens:
            raise HTTPError(400, f"max_tokens must be an integer from 1 to {self.limits.max_tokens}",
                            param="max_tokens")
        constraints = None
        if constrained:
            vocabulary = self.vocabulary
            constraints = [vocabulary.with_automata([auto]) for auto in
                           record_automata(records, self.tokenizer, sets, vocabulary.pieces)]
        results = await self.generate(prompts, max_tokens, gen.Sampling(), constraints=constraints,
                                      images=None if picture is None else [picture] * len(prompts))
        choices = []
        for i, ((text, reason, _), source) in enumerate(zip(results, texts)):
            answer = {"text": text} if kind == "text_completion" else {"message": {"role": "assistant",
                                                                                   "content": text}}
            choices.append({"index": i, **answer, "finish_reason": reason, "logprobs": None,
                            "oie": read_output(source, task, text).to_json()})
        return self._reply(kind, prefix, choices, prompts, results)

    def _reply(self, kind: str, prefix: str, choices, prompts, results) -> dict:
        prompt_tokens = sum(map(len, prompts))
        completion_tokens = sum(count for _, _, count in results)
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def _body(self, request, endpoint: str) -> dict:
        """The request's fields, null ones left out (null means the default: clients send nulls); a field
        this server does not implement is refused by name rather than ignored."""
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPError(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        body = {key: value for key, value in body.items() if value is not None}
        if body.get("model") not in (None, self.name):
            raise HTTPError(404, f"model {body['model']!r} is not served here (this server has {self.name!r})",
                            "model_not_found", "model")
        for key, value in body.items():
            if key not in FIELDS[endpoint] and not (key in NEUTRAL and value == NEUTRAL[key]):
                raise HTTPError(400, f"field {key!r} is not supported by this server", param=key)
        return body

    def _settings(self, body: dict, prompts: list[list[int]]) -> tuple[int, gen.Sampling, tuple[str, ...]]:
        room = self.text_cfg.max_position_embeddings - max(map(len, prompts))  # OpenAI's default: the rest
        default = max(1, min(room, self.limits.max_tokens))  # (a prompt that fills the context: `generate` says so)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default))
        if type(max_tokens) is not int or not 1 <= max_tokens <= self.limits.max_tokens:
            raise HTTPError(400, f"max_tokens must be an integer from 1 to {self.limits.max_tokens}",
                            param="max_tokens")
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise HTTPError(400, "'stop' must be a string or a list of non-empty strings")
        numbers = {key: body.get(key, default) for key, default in
                   (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0), ("seed", 0))}
        for key, value in numbers.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise HTTPError(400, f"'{key}' must be a number", param=key)
        if not float(numbers["top_k"]).is_integer() or not float(numbers["seed"]).is_integer():
            raise HTTPError(400, "'top_k' and 'seed' must be integers")
        if "seed" not in body and numbers["temperature"] > 0:  # each sampled request its own draw
            numbers["seed"] = secrets.randbelow(1 << 31)
        sampling = gen.Sampling(temperature=float(numbers["temperature"]), top_k=int(numbers["top_k"]),
                                top_p=float(numbers["top_p"]), seed=int(numbers["seed"]))
        return max_tokens, sampling, tuple(stop)

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """The prompt of a chat in the model's template (or the last message's text, for a model without
        one), encoded without special tokens: templates write their own."""
        if self.chat_template is None:
            return self.tokenizer.encode(messages[-1]["content"], add_special_tokens=True)
        return self.tokenizer.encode(self.chat_template.render(messages), add_special_tokens=False)

    def _choices(self, prompts: list[list[int]], body: dict) -> tuple[list[list[int]], list[int]]:
        """(n prompts per prompt, prompt by prompt: OpenAI's order of choices; each one's index among its n)."""
        n = body.get("n", 1)
        if type(n) is not int or not 1 <= n <= MAX_N:
            raise HTTPError(400, f"'n' must be an integer from 1 to {MAX_N}", param="n")
        return [p for p in prompts for _ in range(n)], [j for _ in prompts for j in range(n)]

    async def _run(self, prompts: list[list[int]], body: dict) -> list[tuple[str, str, int]]:
        rows, salts = self._choices(prompts, body)
        return await self.generate(rows, *self._settings(body, prompts), salts=salts)

    async def stream(self, request, kind: str, prefix: str, prompts: list[list[int]], body: dict):
        """Server-sent events in OpenAI's chunk format: each choice's text as its tokens are made (held back
        while it ends inside a character or could still become a stop string), then each choice's
        finish_reason, the usage if `stream_options.include_usage`, and `data: [DONE]`. The text joined
        from the chunks equals the answer the same request gets without streaming."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        settings = self._settings(body, prompts)
        max_tokens, stop = settings[0], settings[2]
        rows, salts = self._choices(prompts, body)
        loop, arrived = asyncio.get_running_loop(), asyncio.Queue()
        streams = [lambda step, token, i=i: loop.call_soon_threadsafe(arrived.put_nowait, (i, step, token))
                   for i in range(len(rows))]
        task = asyncio.ensure_future(self.generate(rows, *settings, streams=streams, salts=salts))
        task.add_done_callback(lambda _: arrived.put_nowait(None))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        name, created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        chunk_kind = kind if kind == "text_completion" else kind + ".chunk"

        async def send(choices, usage=None):
            chunk = {"id": name, "object": chunk_kind, "created": created, "model": self.name, "choices": choices}
            if usage is not None:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")

        def delta(i: int, text: str, first: bool) -> dict:
            if kind == "text_completion":
                return {"index": i, "text": text, "finish_reason": None, "logprobs": None}
            return {"index": i, "delta": ({"role": "assistant"} if first else {}) | {"content": text},
                    "finish_reason": None, "logprobs": None}

        tokens, sent, ended = [[] for _ in rows], [""] * len(rows), [False] * len(rows)
        held = max((len(s) - 1 for s in stop), default=0)  # a stop string may be starting at the text's end
        try:
            while (item := await arrived.get()) is not None:
                i, step, token = item
                if ended[i] or step >= max_tokens:
                    continue
                tokens[i].append(token)
                ended[i] = token in self.batcher.eos_ids
                text = self.tokenizer.decode(tokens[i], skip_special_tokens=True)
                ready = text[:len(text) - held] if held else text
                if ready.endswith("\ufffd") or any(s in text for s in stop):
                    continue  # mid-character, or cut below by the final text
                if len(ready) > len(sent[i]):
                    await send([delta(i, ready[len(sent[i]):], not sent[i])])
                    sent[i] = ready
            results = task.result()
            for i, (text, reason, _) in enumerate(results):  # the rest of each text (to its stop), and why it ended
                await send([delta(i, text[len(sent[i]):], not sent[i]) | {"finish_reason": reason}])
            if include_usage:
                await send([], self._reply(kind, prefix, [], prompts, results)["usage"])
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away: free its rows
            task.cancel()
            raise
        await response.write_eof()
        return response

    async def generate(self, prompts: list[list[int]], max_tokens: int, sampling: gen.Sampling,
                       stop: tuple[str, ...] = (), constraints=None, streams=None,
                       salts=None, images=None) -> list[tuple[str, str, int]]:
        """(text, finish_reason, completion tokens) per prompt, generated in the batcher's thread
        (started by `serve`, or by the caller of an in-process server); `automata`: each prompt's output
        constraints (`oie` requests: one-row `gen.Constraints`)."""
        context = self.text_cfg.max_position_embeddings
        for prompt in prompts:
            if not prompt:
                raise HTTPError(400, "the prompt is empty")
            if len(prompt) + max_tokens > context:
                raise HTTPError(400, f"{len(prompt)} prompt tokens + max_tokens {max_tokens} exceed the model's "
                                     f"context of {context} tokens")
        loop = asyncio.get_running_loop()
        constraints, streams = constraints or [None] * len(prompts), streams or [None] * len(prompts)
        images = images or [None] * len(prompts)
        jobs = [Job(prompt, max_tokens, sampling, loop.create_future(), loop, constraint, stream, salt, stop=stop,
                    image=image)
                for prompt, constraint, stream, salt, image in zip(prompts, constraints, streams,
                                                                   salts or [0] * len(prompts), images)]
        try:
            if len(jobs) <= self.limits.max_queue:
                try:
                    self.batcher.submit(jobs)
                except QueueFull:
                    raise HTTPError(429, f"the server is busy ({self.limits.max_queue} prompts queued); retry later",
                                    "rate_limit_exceeded") from None
            else:  # more prompts than the queue holds: queued a queue's worth at a time, not refused
                for start in range(0, len(jobs), self.limits.max_queue):
                    chunk = jobs[start:start + self.limits.max_queue]
                    while True:
                        try:
                            self.batcher.submit(chunk, new_request=start == 0)
                            break
                        except QueueFull:
                            await asyncio.sleep(0.01)
                    await asyncio.gather(*(job.future for job in chunk))
            outputs = await asyncio.gather(*(job.future for job in jobs))
        except asyncio.CancelledError:  # the client went away (aiohttp cancels its handler): free its rows
            for job in jobs:
                job.cancelled = True
            raise
        return [self._finish(tokens, stop) for tokens in outputs]

    def _finish(self, tokens: list[int], stop: tuple[str, ...]) -> tuple[str, str, int]:
        ended = bool(tokens) and tokens[-1] in self.batcher.eos_ids
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        if cuts:  # (the row ended at the token that completed the stop string: usage counts to there)
            return text[:min(cuts)], "stop", len(tokens)
        return text, "stop" if ended else "length", len(tokens)


async def serve(server: Server, host: str, port: int, announce=print) -> None:
    """Serves until SIGTERM or SIGINT, then finishes the requests accepted and returns."""
    # handler_cancellation: a client that disconnects cancels its handler, which frees its queued rows.
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None, shutdown_timeout=60.0,
                           handler_cancellation=True)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server.batcher.start()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        announce(f"serving {server.name} on http://{bound_host}:{bound_port}/v1 (SIGTERM or Ctrl-C stops)")
        await stopping.wait()
        announce("stopping: finishing the requests already accepted")
    finally:
        await runner.cleanup()  # closes the listener, waits for the handlers in flight
        await loop.run_in_executor(None, server.batcher.stop)
