"""SmolLM2-135M-Instruct fine-tuned on Twitter-GMNER train, text side (MNER: PER, LOC, ORG, OTHER), on a
CPU. 300 tweets held out of train (seeded) are the dev set; best/ keeps the step with the best dev MNER
F1 (entity type and span exact: micro WL F1 here, since the tweets have no text label).

A full run is 3 epochs of 6,700 tweets (399 steps, about 70 minutes on a 2-core CPU); it resumes where it stopped:
    oie-jax train --config configs/smollm2_gmner_text.py --workdir runs/smollm2_gmner_text
A short run, the first steps of the full one (same schedule; configs/README.md gives the numbers):
    oie-jax train --config configs/smollm2_gmner_text.py --workdir runs/gmner_short \\
        --config.train.steps_limit=24 --config.eval.f1_every=24 --config.eval.f1_examples=64
"""

from oie_jax.train.defaults import base_config

GMNER = "../shared/data/gmner-twitter10000-v2/txt/train.txt"


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"
    c.model.param_dtype = c.model.dtype = "float32"
    c.data.train = GMNER
    c.data.source = "gmner"
    c.data.dev = "holdout:300"  # 300 tweets of train, never trained on; data.seed picks them
    c.data.seq_len = 256  # about six tweets with their outputs (38 tokens on average) per packed row
    c.data.batch_size = 8
    c.train.epochs = 3
    c.train.lr = 3e-4  # make train's rate for SmolLM2 (configs/sample_smollm2.py); the short run below learns with it
    c.train.warmup_fraction = 0.03
    c.train.decay = "cosine"
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    c.checkpoint.best_metric = "micro/wl/f1"
    c.checkpoint.best_mode = "max"
    c.eval.every = 50  # dev loss
    c.eval.f1_every = 100
    c.eval.f1_examples = 300
    c.eval.max_new_tokens = 0  # from the data: 40 SmolLM2 tokens hold 99.5% of the tweets' outputs (max 50)
    c.log.every = 5
    return c
