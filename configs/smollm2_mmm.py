"""SmolLM2-135M-Instruct fully fine-tuned on the MMM release (all 21 subsets), on one host of any kind.

Put the release files (Train_*.json, test_*.json) under data/mmm/ and import the model as in
configs/sample_smollm2.py.
"""

from oie_jax.train.defaults import MMM_DEV, MMM_TRAIN, base_config


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"  # its architecture, for --dry-run before the import
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_no_batch"
    c.data.train, c.data.dev = MMM_TRAIN, MMM_DEV
    c.data.source = "mmm"
    c.data.seq_len = 1024
    c.data.batch_size = 64
    c.train.micro_batches = 8  # bounds activation memory on a single host
    c.train.loss_chunk = 256  # logits of 8 rows x 256 positions at a time
    c.data.mixture_temperature = 2.0  # lifts the small sub-datasets a little
    c.train.epochs = 3
    c.train.lr = 5e-5
    c.train.weight_decay = 0.01
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every = 500
    c.eval.every = 500
    return c
