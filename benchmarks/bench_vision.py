"""Image encoders, forward only, float32 at batch 32 on this machine: our jitted Flax encoder against
the PyTorch peer with the same weights, in one process run, timed in turns after a warm-up.

    clip-b32     CLIP ViT-B/32 vision tower (openai/clip-vit-base-patch32's configuration, random
                 weights: none ship offline), peer `transformers.CLIPVisionModel`
    siglip-b16   SigLIP ViT-B/16 (google/siglip-base-patch16-224), peer `transformers.SiglipVisionModel`
    mobilenetv2  torchvision's ImageNet MobileNetV2 (the offline weights), peer `torchvision`

Prints images/s of both sides per encoder and last `ratio=` (the smallest ours / peer); the target
is >= 1.0.

    .venv/bin/python benchmarks/bench_vision.py [--rounds 3] [--batch 32] [--encoders clip-b32,mobilenetv2]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import add_smoke_argument, describe  # noqa: E402 (benchmarks/ is on sys.path as a script)

VIT_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224)
VIT_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=224)
ENCODERS = ("clip-b32", "siglip-b16", "mobilenetv2")


def peer_and_directory(name: str, workdir: Path, vit: dict = VIT_BASE):
    """The PyTorch model and the oie-jax vision model directory converted from the same weights."""
    import torch
    import torchvision
    import transformers

    from oie_jax.assets import mobilenet_v2_weights
    from oie_jax.convert import vision

    if name == "mobilenetv2":
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(torch.load(mobilenet_v2_weights(), weights_only=True))
        source = mobilenet_v2_weights()
    else:
        config = (transformers.CLIPVisionConfig(**vit, patch_size=32, hidden_act="quick_gelu")
                  if name == "clip-b32" else transformers.SiglipVisionConfig(**vit, patch_size=16))
        model = (transformers.CLIPVisionModel if name == "clip-b32" else transformers.SiglipVisionModel)(config)
        source = workdir / f"{name}-hf"
        model.save_pretrained(source)
    vision.convert(source, workdir / name, overwrite=True)
    return model.eval(), workdir / name


def compare(name: str, workdir: Path, images: np.ndarray, rounds: int, vit: dict = VIT_BASE) -> float:
    """Prints both sides' images/s for one encoder; returns ours / peer."""
    import jax
    import torch

    from oie_jax.models.encoders import load_vision_model

    peer, directory = peer_and_directory(name, workdir, vit)
    ours, _ = load_vision_model(directory)
    forward = jax.jit(lambda x: tuple(ours(x)))
    inputs = jax.device_put(images)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def run_ours():
        jax.block_until_ready(forward(inputs))

    @torch.inference_mode()
    def run_peer():
        peer(pixels)

    sides = {"oie-jax": run_ours, "peer": run_peer}
    for run in sides.values():  # warm-up: compiles ours, warms torch's allocator
        run()
    speeds = {side: [] for side in sides}
    for _ in range(rounds):
        for side, run in sides.items():
            start = time.perf_counter()
            run()
            speeds[side].append(len(images) / (time.perf_counter() - start))
    medians = {side: statistics.median(s) for side, s in speeds.items()}
    ratio = medians["oie-jax"] / medians["peer"]
    print(f"{name}: oie-jax {medians['oie-jax']:.1f} images/s, {type(peer).__name__} {medians['peer']:.1f} "
          f"images/s (ratio {ratio:.2f})", flush=True)
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each side, in turns")
    parser.add_argument("--batch", type=int, default=32, help="images per forward")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help=f"comma-separated subset of {ENCODERS}")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    vit = VIT_TINY if args.smoke else VIT_BASE
    if args.smoke:
        args.batch, args.rounds = 1, 1

    images = np.random.default_rng(0).normal(size=(args.batch, 224, 224, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        ratios = [compare(name, Path(workdir), images, args.rounds, vit) for name in args.encoders.split(",")]
    print(f"ratio={min(ratios):.2f}")


if __name__ == "__main__":
    main()
