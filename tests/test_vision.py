"""The ViT encoder (CLIP and SigLIP layouts) against `transformers` on random weights of the published
configurations, through the converter; the Hugging Face round trip; conversion errors."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from oie_jax.convert import vision as convert_vision
from oie_jax.errors import UserError
from oie_jax.models.encoders import load_vision_config, load_vision_model
from oie_jax.models.vision import bicubic_matrix
from tests.helpers import randomize

# The vision towers of openai/clip-vit-base-patch32 and google/siglip-base-patch16-224 as published, but with
# 2 of their 12 layers: the layers are scanned, so more of them add minutes, not coverage.
CLIP_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512)
SIGLIP_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                  image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
HF_CLASSES = {"clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel),
              "siglip": (transformers.SiglipVisionConfig, transformers.SiglipVisionModel)}


def hf_vision_model(layout: str, config: dict, directory, seed: int = 0):
    config_class, model_class = HF_CLASSES[layout]
    model = model_class(config_class(**config)).eval()
    randomize(model, seed)
    model.save_pretrained(directory)
    return model


def run_both(model, ours, images: np.ndarray, interpolate: bool):
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2)), interpolate_pos_encoding=interpolate)
    hf_tokens = out.last_hidden_state.numpy()
    grid, pooled = jax.jit(lambda x: tuple(ours(x)))(images)
    return hf_tokens, out.pooler_output.numpy(), np.asarray(grid), np.asarray(pooled)


@pytest.mark.parametrize("layout,config", [("clip", CLIP_B32), ("siglip", SIGLIP_B16)])
def test_vit_equals_transformers_at_native_and_other_sizes_and_round_trips(layout, config, tmp_path):
    model = hf_vision_model(layout, config, tmp_path / "hf")
    convert_vision.convert(tmp_path / "hf", tmp_path / "ours")
    ours, preprocess = load_vision_model(tmp_path / "ours")
    assert preprocess.size == (224, 224) and preprocess.resize == ("crop" if layout == "clip" else "squash")
    rng = np.random.default_rng(0)
    p = config["patch_size"]
    for height, width in [(224, 224), (5 * p, 8 * p + 3)]:  # the second: another grid, and pixels left over
        images = rng.normal(size=(2, height, width, 3)).astype(np.float32)
        hf_tokens, hf_pooled, grid, pooled = run_both(model, ours, images, interpolate=(height, width) != (224, 224))
        patches = hf_tokens[:, 1:] if layout == "clip" else hf_tokens
        assert grid.shape == (2, height // p, width // p, 768)
        assert np.abs(pooled).mean() > 0.1 and np.abs(grid).mean() > 0.1  # not vanishing values
        np.testing.assert_allclose(grid.reshape(patches.shape), patches, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(pooled, hf_pooled, atol=1e-4, rtol=1e-4)

    convert_vision.to_hf(tmp_path / "ours", tmp_path / "back")
    original, back = (load_file(tmp_path / side / "model.safetensors") for side in ("hf", "back"))
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and np.array_equal(back[name], tensor), name
    reloaded = HF_CLASSES[layout][1].from_pretrained(tmp_path / "back")
    assert reloaded.config.hidden_act == config["hidden_act"] and reloaded.config.patch_size == p


def test_bicubic_position_resize_equals_torch():
    table = np.random.default_rng(1).normal(size=(1, 3, 7, 7)).astype(np.float32)
    for out_h, out_w in [(5, 11), (14, 3), (7, 7)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(table), size=(out_h, out_w), mode="bicubic",
                                                   align_corners=False).numpy()
        ours = np.einsum("hi,wj,bcij->bchw", bicubic_matrix(7, out_h), bicubic_matrix(7, out_w), table)
        np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_the_vision_tower_of_a_whole_clip_model_is_taken(tmp_path):
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=16)
    config = transformers.CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                      num_attention_heads=2), vision_config=vision, projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    randomize(model, seed=3)
    model.save_pretrained(tmp_path / "hf")
    cfg = convert_vision.convert(tmp_path / "hf", tmp_path / "ours")
    assert (cfg.layout, cfg.num_layers, cfg.hidden_size) == ("clip", 2, 64)
    ours, _ = load_vision_model(tmp_path / "ours")
    images = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    hf_tokens, hf_pooled, grid, pooled = run_both(model.vision_model, ours, images, interpolate=False)
    np.testing.assert_allclose(grid.reshape(1, 16, 64), hf_tokens[:, 1:], atol=1e-5)
    np.testing.assert_allclose(pooled, hf_pooled, atol=1e-5)


def test_conversion_errors_name_the_file_and_the_tensor(tmp_path):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=16)
    hf_vision_model("siglip", small, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)

    def convert_with(changed: dict, config_changes: dict | None = None):
        save_file(changed, weights, metadata={"format": "pt"})
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
        convert_vision.convert(tmp_path / "hf", tmp_path / "out", overwrite=True)

    name = "encoder.layers.1.self_attn.k_proj.weight"
    with pytest.raises(UserError, match=rf"model.safetensors: tensor '{name}' has shape \(32, 31\)"):
        convert_with({**tensors, name: tensors[name][:, :31].copy()})
    with pytest.raises(UserError, match=r"1 vision tensors missing .*head\.probe"):
        convert_with({k: v for k, v in tensors.items() if k != "head.probe"})
    with pytest.raises(UserError, match=r"unexpected tensor 'vision_model.encoder.layers.1.extra'"):
        convert_with({**tensors, "vision_model.encoder.layers.1.extra": np.zeros(2, np.float32)})
    with pytest.raises(UserError, match=r"tensor 'vision_model.head.probe' appears twice"):
        convert_with({**tensors, "vision_model.head.probe": tensors["head.probe"]})  # an old-style name too
    with pytest.raises(UserError, match=r"model_type 'vit' is not a CLIP or SigLIP vision model"):
        convert_with(tensors, {"model_type": "vit"})
    convert_with(tensors, {"model_type": "siglip_vision_model"})  # the file itself was never the problem
    assert load_vision_config(tmp_path / "out")[0].num_layers == 2
