"""OIELLM that sees the picture, on the picture-decides corpus: each text names one thing ("Jordan",
"Phoenix") whose type only its picture tells (a circle PER, a square ORG, a triangle LOC, a star OTHER).
SmolLM2-135M-Instruct reads the picture as 16 image tokens from torchvision's ImageNet MobileNetV2
(frozen, 128 px: a 4 x 4 grid) through a new projector; the LLaMA and the projector train. CPU, minutes.

    oie-jax data synth-picture --out runs/synth-picture --n 1000 --seed 0
    oie-jax convert vision-to-jax "$MNV2" runs/mobilenet-v2      # README: Vision encoders
    oie-jax train --config configs/picture_synth.py --workdir runs/picture_synth
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"
    c.model.param_dtype = c.model.dtype = "float32"
    c.vision.init = "runs/mobilenet-v2"
    c.vision.preset = "mobilenet-v2"
    c.vision.image_size = 128
    c.vision.resize = "squash"
    c.multimodal.enabled = True
    c.multimodal.images = "runs/synth-picture/images"
    c.multimodal.llama = "full"
    c.data.train = "runs/synth-picture/train.jsonl"
    c.data.dev = "runs/synth-picture/dev.jsonl"
    c.data.source = "records"
    c.data.seq_len = 64  # BOS, 16 image tokens, a dozen words of text, the answer
    c.data.batch_size = 8
    c.train.steps = 120
    c.train.lr = 3e-4
    c.train.warmup_fraction = 0.1
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every = 40
    c.checkpoint.keep = 1
    c.eval.every = 40
    c.eval.f1_every = 40
    c.eval.f1_examples = 64
    c.checkpoint.best_metric = "micro/wl/f1"
    c.checkpoint.best_mode = "max"
    c.log.every = 10
    return c
