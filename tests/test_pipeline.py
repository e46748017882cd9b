"""The input pipeline: mixture, evaluation order, exact resume, and per-process shards."""

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from oie_jax.data.format import Record
from oie_jax.data.pipeline import Pipeline, PipelineConfig, epoch_order
from oie_jax.data.sample import load_sample
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.errors import UserError
from tests.helpers import xla_flags

CONFIG = PipelineConfig(seq_len=256, batch_size=4, seed=3)


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf_dir):
    return load_tokenizer(smollm2_hf_dir)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


def test_resume_gives_exactly_the_following_batches(tokenizer, tmp_path):
    records = load_sample("train")
    whole = Pipeline(records, tokenizer, CONFIG)
    assert whole.describe().startswith("126 sequences of at most 256 tokens; 0 prompts cut")
    steps = whole.steps_in_epoch(0)
    total = steps + 5  # across an epoch boundary
    uninterrupted = take(iter(whole), total)
    first = Pipeline(records, tokenizer, CONFIG)
    head = take(iter(first), 7)
    state = first.state()  # what a checkpoint holds as its JSON item
    assert state == {"epoch": 0, "step": 7, "fingerprint": whole.fingerprint()}
    resumed = Pipeline(records, tokenizer, CONFIG)
    resumed.restore(json.loads(json.dumps(state)))
    tail = take(iter(resumed), total - 7)
    assert_same_batches(head + tail, uninterrupted)
    other = Pipeline(records[1:], tokenizer, CONFIG)
    with pytest.raises(UserError, match="other records or another pipeline config"):
        other.restore(state)
    # Every sequence is in every epoch: the last batch is filled with empty rows, never dropped.
    rows = whole.epoch_rows(0)
    assert len(rows.tokens) % CONFIG.batch_size == 0
    assert (rows.segment_ids > 0).sum() == sum(len(s.tokens) for s in whole.sequences)
    # A new epoch is a new order.
    assert not np.array_equal(uninterrupted[0]["tokens"], uninterrupted[steps]["tokens"])


def test_batches_carry_targets_and_segments(tokenizer):
    batch = next(iter(Pipeline(load_sample("dev"), tokenizer, CONFIG)))
    assert batch["tokens"].shape == (4, 256) and batch["tokens"].dtype == np.int32
    assert (batch["loss_mask"] <= (batch["segment_ids"] > 0)).all()
    assert batch["segment_ids"].max() > 1  # packed
    padded = next(iter(Pipeline(load_sample("dev"), tokenizer, PipelineConfig(seq_len=256, batch_size=4,
                                                                               pack=False))))
    assert padded["segment_ids"].max() == 1


def test_process_shards_split_each_global_batch(tokenizer):
    records = load_sample("train")
    single = take(iter(Pipeline(records, tokenizer, CONFIG)), 6)
    halves = [take(iter(Pipeline(records, tokenizer, CONFIG, rows=slice(2 * p, 2 * p + 2))), 6) for p in range(2)]
    for whole, a, b in zip(single, *halves):
        np.testing.assert_array_equal(np.concatenate([a["tokens"], b["tokens"]]), whole["tokens"])


def test_mixture_temperature_follows_the_formula():
    groups = [("SCNM", "en")] * 80 + [("SCNM", "ja")] * 15 + [("TCREE", "zh")] * 5
    for temperature in (1.0, 2.0, 100.0):
        order = epoch_order(groups, PipelineConfig(mixture_temperature=temperature), epoch=0)
        counts = collections.Counter(groups[i] for i in order)
        weights = {g: n ** (1 / temperature) for g, n in collections.Counter(groups).items()}
        for group, weight in weights.items():
            assert abs(counts[group] - 100 * weight / sum(weights.values())) < 1, (temperature, group)
        assert len(order) == 100
    # Natural proportions visit every example once per epoch.
    assert sorted(epoch_order(groups, PipelineConfig(), epoch=1)) == list(range(100))


def test_small_and_bad_configs(tokenizer):
    record = Record(text="Kazan met Spiegel.", task="NER", label="History", items=(("Person", "Kazan"),))
    batch = next(iter(Pipeline([record], tokenizer, CONFIG)))  # one sequence, three empty rows
    assert (batch["segment_ids"].max(axis=1) == [1, 0, 0, 0]).all()
    with pytest.raises(UserError, match="mixture_temperature > 0"):
        PipelineConfig(mixture_temperature=0)
    with pytest.raises(UserError, match="not rows of a batch of 4"):
        Pipeline([record], tokenizer, CONFIG, rows=slice(2, 6))


TWO_PROCESS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    rank, port, state_dir, phase = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from oie_jax.data.pipeline import Pipeline, PipelineConfig, to_global
    from oie_jax.data.sample import load_sample
    from oie_jax.data.tokenizer import load_tokenizer
    config = PipelineConfig(seq_len=256, batch_size=4, seed=3)
    pipeline = Pipeline(load_sample("train"), load_tokenizer(sys.argv[5]), config)
    mesh = jax.make_mesh((4,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    checksum = jax.jit(lambda t: (t.astype("int64") * (1 + jax.numpy.arange(t.shape[1]))).sum(axis=1),
                       out_shardings=NamedSharding(mesh, P()))
    if phase == "resume":
        pipeline.restore(json.loads((state_dir / "data.json").read_text()))
    sums = []
    iterator = iter(pipeline)
    for _ in range(4):
        batch = to_global(next(iterator), sharding)
        sums.append(np.asarray(checksum(batch["tokens"])).tolist())
    if rank == 0:
        (state_dir / "data.json").write_text(json.dumps(pipeline.state()))
        print("SUMS", json.dumps(sums))
    jax.distributed.shutdown()
""")


def run_two_processes(tmp_path, phase, tokenizer_dir, port):
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS, str(rank), str(port), str(tmp_path), phase,
                               str(tokenizer_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[1]) for rank in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    line = next(line for line in outputs[0][0].splitlines() if line.startswith("SUMS"))
    return json.loads(line[len("SUMS "):])


def test_two_jax_processes_resume_like_one(tokenizer, smollm2_hf_dir, tmp_path):
    """2 processes x 2 CPU devices, gloo collectives: global batches built from each process's own
    rows match the one-process batches, before and after a resume."""
    port = 20000 + os.getpid() % 10000
    first = run_two_processes(tmp_path, "start", smollm2_hf_dir, port)
    second = run_two_processes(tmp_path, "resume", smollm2_hf_dir, port + 1)
    expected = []
    for batch in take(iter(Pipeline(load_sample("train"), tokenizer, CONFIG)), 8):
        tokens = batch["tokens"].astype(np.int64)
        expected.append((tokens * (1 + np.arange(tokens.shape[1]))).sum(axis=1).tolist())
    assert first + second == expected


