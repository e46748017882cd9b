"""`oie-jax serve` as users run it: a real server process on 127.0.0.1, real HTTP requests."""

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import aiohttp
import pytest

from oie_jax import cli
from oie_jax.convert import hf_to_jax
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.infer import generate as gen
from oie_jax.infer.chat import load_chat_template
from oie_jax.models.checkpoint import load_model
from tests.helpers import llama31_hf_config, save_random_hf_llama, save_word_tokenizer

# Role words of the tiny model's chat template (word tokens t7, t8, t9 of the word tokenizer).
TINY_TEMPLATE = ("{% for m in messages %}t7 {{ m['role'] }} {{ m['content'] }} t8 {% endfor %}"
                 "{% if add_generation_prompt %}t9{% endif %}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    hf_dir, ours = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("tiny")
    save_random_hf_llama(hf_dir, llama31_hf_config(eos_token_id=2), seed=3)
    save_word_tokenizer(hf_dir, 320)
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=TINY_TEMPLATE)))
    hf_to_jax.convert(hf_dir, ours)
    return ours


@contextlib.contextmanager
def server(model_dir, *flags):
    """`oie-jax serve MODEL --port 0 ...` in its own process; yields (base URL, process)."""
    process = subprocess.Popen([sys.executable, "-m", "oie_jax.cli", "serve", str(model_dir), "--port", "0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    try:
        while True:
            try:
                line = lines.get(timeout=180)
            except queue.Empty:
                pytest.fail("the server printed no address in 180 s: " + "".join(seen))
            seen.append(line)
            found = re.search(r"on (http://\S+?)/v1 ", line)
            if found:
                break
            assert process.poll() is None, "the server exited: " + "".join(seen)
        yield found.group(1), process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def post(session, url, body, raw: bytes | None = None):
    async with session.post(url, data=raw if raw is not None else json.dumps(body),
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def get(session, url):
    async with session.get(url) as response:
        return response.status, await response.json()


def word_prompts(count):
    return [" ".join(f"t{10 + (7 * i + 3 * j) % 300}" for j in range(3 + i % 5)) for i in range(count)]


def test_concurrent_requests_share_batches_and_answer_as_generate(tiny_dir):
    model, tokenizer = load_model(tiny_dir), load_tokenizer(tiny_dir)
    prompts = word_prompts(16)
    expected = [tokenizer.decode(tokens) for tokens in
                gen.generate(model, tokenizer.encode_batch(prompts), 8, eos_ids=gen.stop_ids(model.cfg, tokenizer))]
    messages = [{"role": "system", "content": "t40 t41"}, {"role": "user", "content": "t50 t51 t52"}]
    chat_prompt = load_chat_template(tiny_dir).render(messages)
    assert chat_prompt == "t7 system t40 t41 t8 t7 user t50 t51 t52 t8 t9"
    chat_expected = tokenizer.decode(gen.generate(model, [tokenizer.encode(chat_prompt, add_special_tokens=False)], 8,
                                                  eos_ids=gen.stop_ids(model.cfg, tokenizer))[0])

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            assert (await get(session, url + "/v1/models"))[1]["data"][0]["id"] == tiny_dir.name
            answers = await asyncio.gather(*(post(session, url + "/v1/completions", {
                "model": tiny_dir.name, "prompt": prompt, "max_tokens": 8, "temperature": 0}) for prompt in prompts))
            chat = await post(session, url + "/v1/chat/completions",
                              {"messages": messages, "max_tokens": 8, "temperature": 0})
            return answers, chat, (await get(session, url + "/health"))[1]

    with server(tiny_dir, "--batch-size", "16") as (url, _):
        answers, chat, health = asyncio.run(scenario(url))
    assert [status for status, _ in answers] == [200] * 16
    assert [body["choices"][0]["text"] for _, body in answers] == expected
    assert answers[0][1]["usage"]["prompt_tokens"] == len(tokenizer.encode(prompts[0]))
    assert chat[0] == 200 and chat[1]["choices"][0]["message"] == {"role": "assistant", "content": chat_expected}
    assert health["requests"] == 17
    assert health["batches"] < 16, health  # 16 concurrent requests in fewer generation batches


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(tiny_dir):
    url_body = {"prompt": "t5 t6", "max_tokens": 4, "temperature": 0}
    cases = [  # (path, body or raw bytes, status, words of the message)
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", {"max_tokens": 4}, 400, "'prompt'"),
        ("/v1/completions", dict(url_body, n=17), 400, "'n' must be an integer from 1 to 16"),
        ("/v1/completions", dict(url_body, stream=True, oie={"task": "NER"}), 400, "no n, temperature, stop or stream"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "t5"}], "tools": []}, 400,
         "field 'tools' is not supported"),
        ("/v1/completions", dict(url_body, presence_penalty=0.5), 400, "field 'presence_penalty'"),
        ("/v1/completions", dict(url_body, logprobs=2), 400, "field 'logprobs'"),
        ("/v1/completions", dict(url_body, model="gpt-4o"), 404, "not served here"),
        ("/v1/completions", dict(url_body, max_tokens=0), 400, "max_tokens"),
        ("/v1/completions", dict(url_body, max_tokens=200), 400, "max_tokens"),
        ("/v1/completions", dict(url_body, temperature="hot"), 400, "'temperature'"),
        ("/v1/completions", dict(url_body, top_p=0), 400, "top_p"),
        ("/v1/completions", dict(url_body, prompt=" ".join(["t9"] * 250), max_tokens=8), 400, "context of 256"),
        ("/v1/completions", b'{"prompt": "' + b"t5 " * 700 + b'"}', 413, "over 2,000 bytes"),
        ("/v1/chat/completions", {"messages": []}, 400, "non-empty list"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "t5"}]}, 400, "messages[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "type 'text'"),
        ("/v1/nowhere", {}, 404, "Not Found"),
    ]

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            seen = [await post(session, url + path, body if isinstance(body, dict) else None,
                               raw=body if isinstance(body, bytes) else None) for path, body, _, _ in cases]
            return seen, await post(session, url + "/v1/completions", url_body)

    with server(tiny_dir, "--max-request-bytes", "2000", "--max-tokens", "128") as (url, _):
        seen, after = asyncio.run(scenario(url))
    for (path, body, status, words), (got_status, got) in zip(cases, seen):
        assert got_status == status, (path, body, got)
        assert words in got["error"]["message"], (path, got)
    assert after[0] == 200 and after[1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_semantics_nulls_defaults_n_seeds_and_prompt_lists_longer_than_the_queue(tiny_dir):
    model, tokenizer = load_model(tiny_dir), load_tokenizer(tiny_dir)
    prompts = word_prompts(5)
    greedy = [tokenizer.decode(tokens) for tokens in
              gen.generate(model, tokenizer.encode_batch(prompts), 8, eos_ids=gen.stop_ids(model.cfg, tokenizer))]

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            ask = lambda body: post(session, url + "/v1/completions", {"prompt": "t5 t6", **body})  # noqa: E731
            nulls = await ask({"max_tokens": None, "temperature": None, "n": None, "seed": None, "stop": None,
                               "presence_penalty": 0, "logprobs": False})
            choices = await ask({"max_tokens": 8, "temperature": 0, "n": 3})
            unseeded = [await ask({"max_tokens": 8, "temperature": 1.0}) for _ in range(2)]
            seeded = [await ask({"max_tokens": 8, "temperature": 1.0, "seed": 7}) for _ in range(2)]
            # The same seeded request beside another sampled one, in one batch: the same sample.
            seeded += list(await asyncio.gather(ask({"max_tokens": 8, "temperature": 1.0, "seed": 7}),
                                                ask({"max_tokens": 8, "temperature": 1.0, "seed": 9})))[:1]
            listed = await post(session, url + "/v1/completions", {"prompt": prompts, "max_tokens": 8,
                                                                     "temperature": 0})
            return nulls, choices, unseeded, seeded, listed

    with server(tiny_dir, "--max-queue", "2", "--batch-size", "2") as (url, _):
        nulls, choices, unseeded, seeded, listed = asyncio.run(scenario(url))
    assert nulls[0] == 200, nulls
    usage = nulls[1]["usage"]  # max_tokens null: the room left in the 256-token context
    assert usage["prompt_tokens"] == 3 and (usage["completion_tokens"] == 253
                                            or nulls[1]["choices"][0]["finish_reason"] == "stop")
    assert [c["index"] for c in choices[1]["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in choices[1]["choices"]}) == 1 and choices[1]["usage"]["completion_tokens"] == 24
    texts = lambda pair: [body["choices"][0]["text"] for _, body in pair]  # noqa: E731
    assert len(set(texts(unseeded))) == 2 and len(set(texts(seeded))) == 1
    assert listed[0] == 200 and [c["text"] for c in listed[1]["choices"]] == greedy  # 5 prompts, a queue of 2


def test_an_oie_request_is_answered_as_oie_jax_extract_would(tiny_smollm2_dir, tmp_path):
    import shutil

    from oie_jax.data.labels import LabelSet, model_label_sets, save_label_sets
    from oie_jax.infer.extract import extract

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_smollm2_dir, model_dir)
    save_label_sets({"NER": LabelSet(("Science", "Travel"), ("Person", "Location"))}, model_dir)
    texts = ["Marie Curie worked in Paris.", "Soseki was born in Edo and lived in Tokyo."]
    expected = [e.to_json() for e in extract(str(model_dir), texts, "NER", max_new_tokens=24,
                                             labels=model_label_sets(model_dir))]
    own = {"NER": {"text": [""], "items": ["Person"]}}

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            completions = await post(session, url + "/v1/completions",
                                     {"prompt": texts, "oie": {"task": "NER"}, "max_tokens": 24})
            chat = await post(session, url + "/v1/chat/completions", {
                "messages": [{"role": "user", "content": texts[1]}], "oie": {"task": "NER", "labels": own},
                "max_tokens": 24})
            wrong = await post(session, url + "/v1/completions", {"prompt": "x", "oie": {"task": "Nope"}})
            return completions, chat, wrong

    with server(model_dir) as (url, _):
        completions, chat, wrong = asyncio.run(scenario(url))
    assert all(e["well_formed"] and e["output"] for e in expected)  # (a random model: labels and copies, no sense)
    assert completions[0] == 200 and [c["oie"] for c in completions[1]["choices"]] == expected
    assert [c["text"] for c in completions[1]["choices"]] == [e["output"] for e in expected]
    extraction = chat[1]["choices"][0]["oie"]
    assert chat[0] == 200 and extraction["well_formed"] and extraction["label"] == ""
    assert all(item["fields"][0] == "Person" and item["fields"][1] in texts[1] for item in extraction["items"])
    assert wrong[0] == 400 and wrong[1]["error"]["param"] == "oie"


def test_oie_requests_with_their_own_max_tokens_share_a_batch_and_each_closes_within_its_own(tiny_smollm2_dir):
    """In process, both requests queued before the generation thread starts: one batch, two budgets."""
    from oie_jax.data.labels import model_label_sets
    from oie_jax.infer.extract import extract
    from oie_jax.infer.serve import Server

    texts = ["Marie Curie worked in Paris.", "Soseki was born in Edo and lived in Tokyo."]
    budgets = (24, 17)
    expected = [[e.to_json() for e in extract(str(tiny_smollm2_dir), texts, "NER", max_new_tokens=budget,
                                              labels=model_label_sets(tiny_smollm2_dir))] for budget in budgets]
    server = Server.from_directory(tiny_smollm2_dir)

    async def scenario():
        requests = [asyncio.ensure_future(server.extract("text_completion", "cmpl", texts,
                                                         {"oie": {"task": "NER"}, "max_tokens": budget}))
                    for budget in budgets]
        await asyncio.sleep(0)  # each has queued its rows
        server.batcher.start()
        return await asyncio.gather(*requests)

    answers = asyncio.run(scenario())
    server.batcher.stop()
    assert server.batcher.batches == 1
    assert all(e["well_formed"] for outputs in expected for e in outputs) and expected[0] != expected[1]
    assert [[choice["oie"] for choice in answer["choices"]] for answer in answers] == expected


def test_the_official_openai_client_gets_answers_choices_stops_and_errors(tiny_dir):
    import openai

    model, tokenizer = load_model(tiny_dir), load_tokenizer(tiny_dir)
    prompt = word_prompts(1)[0]
    greedy = tokenizer.decode(gen.generate(model, [tokenizer.encode(prompt)], 8,
                                           eos_ids=gen.stop_ids(model.cfg, tokenizer))[0])
    with server(tiny_dir) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        completion = client.completions.create(model=tiny_dir.name, prompt=prompt, max_tokens=8, temperature=0)
        assert completion.choices[0].text == greedy
        one, two = (client.chat.completions.create(model=tiny_dir.name, max_tokens=8, temperature=0, n=n,
                                                   messages=[{"role": "user", "content": "t50 t51"}]) for n in (1, 2))
        assert [c.index for c in two.choices] == [0, 1]
        assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2  # greedy
        assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
        words = greedy.split()
        stopped = client.completions.create(model=tiny_dir.name, prompt=prompt, max_tokens=8, temperature=0,
                                            stop=[words[2]])
        assert stopped.choices[0].text == greedy[:greedy.index(words[2])]
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.usage.completion_tokens == len(tokenizer.encode(greedy[:greedy.index(words[2])] + words[2],
                                                                       add_special_tokens=False))
        # Streaming: the text joined from the chunks is the answer without streaming, in several chunks.
        chunks = list(client.chat.completions.create(
            model=tiny_dir.name, messages=[{"role": "user", "content": "t50 t51"}], max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == one.choices[0].message.content and len(pieces) > 1
        assert chunks[-1].usage.completion_tokens == one.usage.completion_tokens
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == one.choices[0].finish_reason
        streamed = client.completions.create(model=tiny_dir.name, prompt=prompt, max_tokens=8, temperature=0, n=2,
                                             stop=[words[2]], stream=True)
        joined = {0: "", 1: ""}
        for chunk in streamed:
            for choice in chunk.choices:
                joined[choice.index] += choice.text
        assert joined == {0: stopped.choices[0].text, 1: stopped.choices[0].text}
        assert [m.id for m in client.models.list()] == [tiny_dir.name]
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.completions.create(model="gpt-4o", prompt=prompt, max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="'tools' is not supported") as refused:
            client.chat.completions.create(model=tiny_dir.name, messages=[{"role": "user", "content": "t5"}],
                                           tools=[{"type": "function", "function": {"name": "f"}}])
        assert refused.value.body["param"] == "tools"


def test_a_client_that_goes_away_frees_its_queued_rows(tiny_dir):
    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            long_one = asyncio.ensure_future(post(session, url + "/v1/completions", {
                "prompt": word_prompts(30), "max_tokens": 240, "temperature": 0}))  # 30 batches of one row
            while (await get(session, url + "/health"))[1]["queued"] == 0:
                await asyncio.sleep(0.01)
            impatient = [{"prompt": "t5 t6", "max_tokens": 8, "temperature": 0},
                         {"prompt": "t5 t7", "max_tokens": 8, "temperature": 0, "stream": True},
                         {"messages": [{"role": "user", "content": "t5"}], "max_tokens": 8, "stream": True}]
            for body in impatient:  # queued behind the long request, then the client leaves
                path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(post(session, url + path, body), 0.3)
            finished = await long_one
            for _ in range(500):  # the generation thread drops them when it takes them from the queue
                health = (await get(session, url + "/health"))[1]
                if health["dropped"] == 3:
                    break
                await asyncio.sleep(0.01)
            return finished, health

    with server(tiny_dir, "--batch-size", "1", "--max-queue", "40") as (url, _):
        finished, health = asyncio.run(scenario(url))
    assert finished[0] == 200 and len(finished[1]["choices"]) == 30
    assert health["dropped"] == 3 and health["batches"] == 30, health  # nothing generated for them


def test_a_full_queue_answers_429_and_sigterm_finishes_the_accepted_requests(tiny_dir):
    async def scenario(url, process):
        async with aiohttp.ClientSession() as session:
            burst = await asyncio.gather(*(post(session, url + "/v1/completions", {
                "prompt": prompt, "max_tokens": 64, "temperature": 0}) for prompt in word_prompts(12)))
            requests = (await get(session, url + "/health"))[1]["requests"]
            # A long request in flight, then SIGTERM: it is answered, and the server exits cleanly.
            long_one = asyncio.ensure_future(post(session, url + "/v1/completions",
                                                  {"prompt": "t5 t6 t7", "max_tokens": 120, "temperature": 0}))
            while (await get(session, url + "/health"))[1]["requests"] == requests:
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            return burst, await long_one

    with server(tiny_dir, "--max-queue", "2", "--batch-size", "2") as (url, process):
        burst, last = asyncio.run(scenario(url, process))
        assert process.wait(timeout=120) == 0
    statuses = [status for status, _ in burst]
    assert 429 in statuses and 200 in statuses, statuses
    busy = next(body for status, body in burst if status == 429)
    assert "busy" in busy["error"]["message"]
    assert last[0] == 200 and last[1]["usage"]["completion_tokens"] > 0


def test_smollm2_served_answers_equal_oie_jax_generate(smollm2_dir, capsys):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    template = load_chat_template(smollm2_dir)
    rendered = template.render(messages)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert rendered == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = "Tokyo is the capital of"
    assert cli.main(["generate", "--model", str(smollm2_dir), "--prompt", prompt, "--max-new-tokens", "16"]) == 0
    completion_expected = capsys.readouterr().out[:-1]  # print's newline
    assert cli.main(["generate", "--model", str(smollm2_dir), "--prompt", rendered, "--max-new-tokens", "16"]) == 0
    chat_expected = capsys.readouterr().out[:-1]

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(
                post(session, url + "/v1/completions", {"prompt": prompt, "max_tokens": 16, "temperature": 0}),
                post(session, url + "/v1/chat/completions", {"messages": messages, "max_tokens": 16,
                                                             "temperature": 0}))

    import openai

    with server(smollm2_dir) as (url, _):
        (status, completion), (chat_status, chat) = asyncio.run(scenario(url))
        # The official client, streaming: multi-byte characters and all, the chunks join to the answer.
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        chunks = client.chat.completions.create(model=smollm2_dir.name, messages=messages, max_tokens=16,
                                                temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        # Short enough to share the English chat's compiled programs (prompt and room buckets); 15 new tokens
        # end on a whole character.
        japanese = [{"role": "user", "content": "日本の首都は?"}]
        whole = client.chat.completions.create(model=smollm2_dir.name, messages=japanese, max_tokens=15,
                                               temperature=0).choices[0].message.content
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=smollm2_dir.name, messages=japanese, max_tokens=15, temperature=0, stream=True) if c.choices]
    assert status == chat_status == 200
    assert completion["choices"][0]["text"] == completion_expected
    assert chat["choices"][0]["message"]["content"] == chat_expected == streamed
    assert "Paris" in chat_expected
    assert "".join(pieces) == whole and "\ufffd" not in "".join(pieces) and len(pieces) > 2
