"""GMNER as generation on the synthetic corpus: one multimodal SmolLM2 writes every entity with its type and
its region ("none", or the box's edges in hundredths of the image), the way H-Index and TIGER have one model
produce entity-type-region triples, in place of the two-stage recipe (`configs/gmner_synth_text.py`, then a
grounding head: `configs/gmner_synth.py`). The picture enters as 16 image tokens: torchvision's ImageNet
MobileNetV2 (frozen) at 256 px, its 8 x 8 grid pooled 2 x 2, through a new projector; the LLaMA and the
projector train. CPU, about a quarter of an hour.

    oie-jax data synth-gmner --out runs/synth-gmner --n 1500 --seed 0
    for split in train dev test; do
        oie-jax data convert --from gmner --grounded runs/synth-gmner/txt/$split.txt \\
            runs/synth-gmner/$split.grounded.jsonl
    done
    oie-jax train --config configs/gmner_generation.py --workdir runs/gmner_generation
    oie-jax eval-gmner --model runs/gmner_generation/model --data runs/synth-gmner/txt/test.txt \\
        --images runs/synth-gmner/images --constrained
"""

from pathlib import Path

from oie_jax.train.config_file import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("picture_synth.py"))  # the same model, another corpus
    c.vision.image_size = 256
    c.multimodal.images = "runs/synth-gmner/images"
    c.multimodal.pool = 2
    c.data.train = "runs/synth-gmner/train.grounded.jsonl"
    c.data.dev = "runs/synth-gmner/dev.grounded.jsonl"
    c.data.seq_len = 96  # BOS, 16 image tokens, the tweet, its entities with their regions: at most 91 here
    c.train.steps = 100
    c.checkpoint.every = 50
    c.checkpoint.best_metric = "dev_loss"  # GMNER F1 needs generation: `oie-jax eval-gmner` scores the test split
    c.checkpoint.best_mode = "min"
    c.eval.every = 50
    c.eval.f1_every = 0
    return c
