"""`oie-jax serve` under load: N concurrent streaming clients against the same requests sent one at a time,
in one process run, against a real server process on 127.0.0.1. Each request is a chat with one sample
sentence, greedy, max_tokens new tokens. Prints, for both ways, completion tokens/s and the p50/p99
time to first token; checks that nothing is lost and that every answer equals `generate`'s greedy
output for its prompt (in this process, the model loaded again); last `ratio=` (concurrent tokens/s /
sequential tokens/s); the target is >= 4 at 64 clients on a 2-core CPU.

    .venv/bin/python benchmarks/bench_serve.py [--model runs/smollm2-135m-instruct] [--clients 64]
"""

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "oie_jax" / "data" / "sample" / "test.jsonl"


def tiny_model(directory: Path) -> Path:
    """A random tiny LLaMA with a word tokenizer and a chat template (the smoke run's model)."""
    sys.path.insert(0, str(ROOT))
    from oie_jax.convert import hf_to_jax
    from tests.helpers import llama31_hf_config, save_random_hf_llama, save_word_tokenizer

    hf = directory / "hf"
    save_random_hf_llama(hf, llama31_hf_config(eos_token_id=2), seed=3)
    save_word_tokenizer(hf, 320)
    config = json.loads((hf / "tokenizer_config.json").read_text())
    template = "{% for m in messages %}t7 {{ m['content'] }} t8 {% endfor %}t9"
    (hf / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=template)))
    hf_to_jax.convert(hf, directory / "tiny")
    return directory / "tiny"


def start_server(model: Path, batch_size: int, queue: int):
    process = subprocess.Popen([sys.executable, "-m", "oie_jax.cli", "serve", str(model), "--port", "0",
                                "--batch-size", str(batch_size), "--max-queue", str(queue)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        found = re.search(r"on (http://\S+?)/v1 ", line)
        if found:
            return process, found.group(1)
    raise SystemExit("the server exited before it printed its address")


async def ask(session, url: str, content: str, max_tokens: int) -> tuple[str, float, float, int]:
    """(text, seconds to the first token, seconds to the end, completion tokens) of one streamed chat."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, text, tokens = time.perf_counter(), None, "", 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - start
                text += piece
    end = time.perf_counter() - start
    return text, first if first is not None else end, end, tokens


async def sequential_and_concurrent(url: str, contents: list[str], max_tokens: int):
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        await ask(session, url, contents[0], max_tokens)  # warm-up: compiles the shapes of one request
        await asyncio.gather(*(ask(session, url, c, max_tokens) for c in contents))  # and of full batches
        start = time.perf_counter()
        one_by_one = [await ask(session, url, c, max_tokens) for c in contents]
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        together = await asyncio.gather(*(ask(session, url, c, max_tokens) for c in contents))
        concurrent = time.perf_counter() - start
    return one_by_one, sequential, together, concurrent


def expected_answers(model_dir: Path, contents: list[str], max_tokens: int) -> list[str]:
    """`generate`'s greedy answers to the same chats, in this process."""
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer import generate as gen
    from oie_jax.infer.chat import load_chat_template
    from oie_jax.models.checkpoint import load_model

    model, tokenizer, template = load_model(model_dir), load_tokenizer(model_dir), load_chat_template(model_dir)
    prompts = [tokenizer.encode(template.render([{"role": "user", "content": c}]), add_special_tokens=False)
               for c in contents]
    outputs = gen.generate(model, prompts, max_tokens, eos_ids=gen.stop_ids(model.cfg, tokenizer), batch_size=16)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in outputs]


def report(name: str, results, seconds: float) -> float:
    tokens = sum(r[3] for r in results)
    firsts = sorted(r[1] for r in results)
    p99 = firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))]
    print(f"{name}: {len(results)} requests, {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.1f} tokens/s; "
          f"time to first token p50 {statistics.median(firsts):.2f} s, p99 {p99:.2f} s", flush=True)
    return tokens / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "smollm2-135m-instruct"),
                        help="oie-jax model directory with a chat template (make train converts SmolLM2 there)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="the server's --batch-size")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            model, args.clients, args.max_tokens = tiny_model(Path(scratch)), 8, 8
            contents = [" ".join(f"t{10 + (7 * i + 3 * j) % 300}" for j in range(3 + i % 5)) for i in range(8)]
        else:
            model = Path(args.model)
            if not (model / "oie_model.json").is_file():
                raise SystemExit(f"{model}: not an oie-jax model directory (`make train` converts SmolLM2 there)")
            texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
            contents = [texts[i % len(texts)] for i in range(args.clients)]
        process, url = start_server(model, args.batch_size, max(64, args.clients))
        try:
            one_by_one, sequential, together, concurrent = asyncio.run(
                sequential_and_concurrent(url, contents, args.max_tokens))
        finally:
            process.terminate()
            process.wait()
        expected = expected_answers(model, contents, args.max_tokens)
    base = report("one at a time", one_by_one, sequential)
    both = report(f"{args.clients} concurrent", together, concurrent)
    lost = sum(r[3] == 0 for r in together)
    different = sum(r[0] != e for results in (together, one_by_one) for r, e in zip(results, expected))
    print(f"lost: {lost}; answers different from generate's greedy ones: {different} of {2 * len(contents)}")
    print(f"ratio={both / base:.2f}")


if __name__ == "__main__":
    main()
