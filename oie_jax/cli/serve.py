"""`oie-jax serve`: an OpenAI-compatible HTTP server for a model directory."""

from oie_jax.cli.arguments import positive_int
from oie_jax.models.policies import DTYPES, GENERATION_DTYPE_HELP


def cmd_serve(args):
    import asyncio

    from oie_jax.infer.serve import Limits, Server, serve

    limits = Limits(batch_size=args.batch_size, max_queue=args.max_queue, max_request_bytes=args.max_request_bytes,
                    max_tokens=args.max_tokens)
    server = Server.from_directory(args.model, args.name, limits, args.dtype)
    if server.chat_template is None:
        print(f"note: {args.model} has no chat template: /v1/chat/completions answers 400", flush=True)
    asyncio.run(serve(server, args.host, args.port, announce=lambda line: print(line, flush=True)))


def add_parsers(commands) -> None:
    parser = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Serves MODEL at /v1/chat/completions (prompts in the model's own chat template), "
                    "/v1/completions, /v1/models and /health. Concurrent requests share generation batches: "
                    "one thread generates for every prompt waiting, up to --batch-size rows. Sampling follows "
                    "the request (temperature 0 is greedy; OpenAI's default is 1.0; a sampled request without "
                    "a seed gets a fresh one), n up to 16 choices, max_tokens by default the room left in the "
                    "context (at most --max-tokens); stream=true sends server-sent events as tokens are made; null "
                    "means the default, and a field the server does not implement (tools, logprobs, ...) gets a "
                    "400 naming it. Errors are OpenAI error "
                    "objects. A full queue answers 429 (a prompt list longer than the queue waits its turn), an "
                    "oversized body 413. A request with an 'oie' field ({\"task\": \"NER\"}, optional labels) is "
                    "answered as `oie-jax extract` would, the extraction beside each choice's text. SIGTERM or "
                    "Ctrl-C finishes the requests already accepted and exits.")
    parser.add_argument("model", help="oie-jax model directory (from `convert hf-to-jax` or a training run's model/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    parser.add_argument("--name", help="model id in requests and /v1/models (default: the directory's name)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="rows of one generation batch")
    parser.add_argument("--max-queue", type=positive_int, default=64, help="prompts waiting at most (then 429)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=1 << 20,
                        help="largest request body (then 413)")
    parser.add_argument("--max-tokens", type=positive_int, default=1024, help="largest max_tokens a request may ask")
    parser.add_argument("--dtype", choices=DTYPES, help=GENERATION_DTYPE_HELP)
    parser.set_defaults(run=cmd_serve)
