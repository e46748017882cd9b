"""Grounded NER on Twitter-GMNER (Yu et al., ACL 2023): SmolLM2-135M-Instruct extracts the entities and
learns with the grounding head (the LLaMA trains too, with its next-token loss), on MobileNetV2 features
of the tweets' images at 448 px. Meant for an accelerator: on a CPU an epoch of the 7,000 training tweets
takes hours. The images are not redistributed with the annotations; put them (IMGID.jpg) in one
directory and name it:

    oie-jax convert vision-to-jax "$(python -c 'from oie_jax.assets import mobilenet_v2_weights as w; print(w())')" \\
        runs/mobilenet-v2
    oie-jax train --config configs/gmner_twitter.py --workdir runs/gmner_twitter \\
        --config.grounding.images=/path/to/twitter-gmner/images
    oie-jax eval-gmner --model runs/gmner_twitter/model --data data/twitter-gmner/txt/test.txt \\
        --images /path/to/twitter-gmner/images

A CLIP or SigLIP tower instead: `--config.vision.init=runs/clip-b16 --config.vision.preset=clip-vit-b16`
(`oie-jax convert vision-to-jax`), and `--config.vision.trainable=True` to fine-tune it.
"""

from oie_jax.train.defaults import base_config

GMNER = "data/twitter-gmner"  # txt/{train,dev,test}.txt and xml/ as released


def get_config():
    c = base_config()
    c.model.init = "runs/smollm2-135m-instruct"
    c.model.preset = "smollm2-135m"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.vision.init = "runs/mobilenet-v2"
    c.vision.preset = "mobilenet-v2"
    c.vision.resize = "pad"
    c.vision.image_size = 448
    c.grounding.enabled = True
    c.grounding.images = f"{GMNER}/images"
    c.grounding.llama = "full"
    c.data.train = f"{GMNER}/txt/train.txt"
    c.data.dev = f"{GMNER}/txt/dev.txt"
    c.data.source = "gmner"
    c.data.seq_len = 128  # tweets and their entities: well under 128 SmolLM2 tokens
    c.data.batch_size = 32
    c.train.epochs = 10
    c.train.lr = 1e-4
    c.train.warmup_fraction = 0.05
    c.train.weight_decay = 0.05
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every = 200
    c.checkpoint.best_metric = "gmner/f1"
    c.checkpoint.best_mode = "max"
    c.eval.every = 200
    c.eval.f1_every = 600
    c.eval.max_new_tokens = 64
    c.log.every = 20
    return c
