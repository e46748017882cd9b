"""A random two-layer model with byte tokens on the embedded sample corpus: seconds per run, for tests
and for debugging the trainer.

    oie-jax train --config configs/tiny_debug.py --workdir runs/tiny
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.preset = "tiny"
    c.model.tokenizer = "bytes"
    c.data.seq_len = 256  # most sample records fit in bytes; longer prompts are cut, and counted
    c.data.batch_size = 8
    c.train.steps = 12
    c.train.lr = 1e-3
    c.train.warmup_fraction = 0.2
    c.train.decay = "constant"  # lets a run be extended (train.steps) with the same updates
    c.checkpoint.every = 5
    c.eval.every = 5
    c.log.every = 1
    c.export.model = False
    return c
