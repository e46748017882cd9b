"""OIELLM with image tokens (LLaVA's layout) against `transformers`' LlavaForConditionalGeneration on
random weights and a real photo: logits, the LLaVA round trip, decoding from a prefilled cache, a
sharded forward, the placeholder count."""

import json
from pathlib import Path

import jax
import matplotlib
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file

from oie_jax import cli, sharding
from oie_jax.convert import llava
from oie_jax.data import synth_picture
from oie_jax.data.format import Grounding, Record, render_input
from oie_jax.data.image_rows import ImageRowsPipeline
from oie_jax.data.images import ImageSource, decode, prepare
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.sources.registry import load_source, write_jsonl
from oie_jax.data.tokenizer import ByteTokenizer, load_tokenizer
from oie_jax.errors import UserError
from oie_jax.infer.extract import extract
from oie_jax.infer.generate import cut_at_eos, generate
from oie_jax.models import encoders
from oie_jax.models.encoders import Preprocess
from oie_jax.models.llama import init_cache
from oie_jax.models.multimodal import MultimodalConfig, check_placeholders
from oie_jax.models.multimodal_dir import load_multimodal_model
from tests.helpers import randomize, save_word_tokenizer

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# Towers of the two published layouts at a test size: 64-pixel images of 16-pixel patches (16 image
# tokens), three layers so that LLaVA's feature layer (-2) is neither the first nor the last.
TOWERS = {
    "clip": (transformers.CLIPVisionConfig, dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)),
    "siglip": (transformers.SiglipVisionConfig, dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)),
}
TOWER_SIZE = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                  patch_size=16)
TEXT = dict(vocab_size=520, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
IMAGE_TOKEN, IMAGE_TOKENS = 515, 16


def save_hf_llava(layout: str, directory: Path, seed: int = 0):
    vision_class, vision_settings = TOWERS[layout]
    config = transformers.LlavaConfig(
        vision_config=vision_class(**TOWER_SIZE, **vision_settings), text_config=transformers.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN, image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default" if layout == "clip" else "full")  # CLIP drops its class token
    model = transformers.LlavaForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.save_pretrained(directory)
    return model


def photos(preprocess) -> np.ndarray:
    """The photo, and the photo flipped upside down, as the encoder's input (2, 64, 64, 3)."""
    photo = decode(PHOTO)
    return np.stack([prepare(photo, preprocess)[0], prepare(photo[::-1].copy(), preprocess)[0]])


def prompt(images: int = 1) -> np.ndarray:
    """A row: BOS, two words, the placeholders of `images` images, four words."""
    return np.array([1, 17, 33, *[IMAGE_TOKEN] * (IMAGE_TOKENS * images), 40, 41, 300, 7], np.int32)


def hf_logits(model, tokens: np.ndarray, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens).long(),
                    pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.logits.numpy()


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_logits_equal_transformers_llava_on_a_photo_and_round_trip(layout, tmp_path):
    hf = save_hf_llava(layout, tmp_path / "hf")
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    ours, preprocess = load_multimodal_model(tmp_path / "ours")
    assert preprocess.size == (64, 64)
    images = photos(preprocess)
    forward = jax.jit(lambda tokens, images: ours(tokens, images)[0])

    one_each = np.stack([prompt(), prompt()])  # a row per image
    logits = np.asarray(forward(one_each, images))
    np.testing.assert_allclose(logits, hf_logits(hf, one_each, images), atol=1e-4, rtol=1e-4)
    # The words after the image see it: the two photos' answers differ by far more than the tolerance.
    after = slice(3 + IMAGE_TOKENS, None)
    assert np.abs(logits[0, after] - logits[1, after]).max() > 10 * 1e-4

    both = prompt(images=2)[None]  # one row, two images: the placeholders take them in order
    np.testing.assert_allclose(np.asarray(forward(both, images[None])), hf_logits(hf, both, images),
                               atol=1e-4, rtol=1e-4)

    assert cli.main(["convert", "jax-to-llava", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    original, back = (load_file(tmp_path / side / "model.safetensors") for side in ("hf", "back"))
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and np.array_equal(back[name], tensor), name
    reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_array_equal(hf_logits(reloaded, one_each, images), hf_logits(hf, one_each, images))


def test_decoding_after_an_image_prefill_equals_the_whole_sequence(tmp_path):
    save_hf_llava("clip", tmp_path / "hf", seed=1)
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    model, preprocess = load_multimodal_model(tmp_path / "ours")
    images = photos(preprocess)[:1]
    tokens = prompt()[None]
    whole = np.asarray(model(tokens, images)[0])

    prefix = tokens.shape[1] - 3
    cache = init_cache(model.llama.cfg, 1, tokens.shape[1])
    logits, cache = model(tokens[:, :prefix], images, cache=cache)
    stepped = [np.asarray(logits[:, -1])]
    for i in range(prefix, tokens.shape[1] - 1):  # the image is in the cache now: text tokens only
        logits, cache = model(tokens[:, i:i + 1], cache=cache)
        stepped.append(np.asarray(logits[:, -1]))
    np.testing.assert_allclose(np.stack(stepped, axis=1), whole[:, prefix - 1:-1], atol=1e-4, rtol=1e-4)


def test_greedy_generation_with_images_equals_transformers(tmp_path):
    hf = save_hf_llava("clip", tmp_path / "hf", seed=4)
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    model, preprocess = load_multimodal_model(tmp_path / "ours")
    images = photos(preprocess)
    prompts = [prompt().tolist(), prompt().tolist()[:-2]]  # two lengths: the shorter row is left-padded
    ours = generate(model, prompts, max_new_tokens=6, images=images)
    for row, (tokens, image) in enumerate(zip(prompts, images)):
        with torch.no_grad():
            made = hf.generate(input_ids=torch.tensor([tokens]), pixel_values=torch.from_numpy(
                image[None].transpose(0, 3, 1, 2).copy()), max_new_tokens=6, do_sample=False)
        expected = cut_at_eos(made[0, len(tokens):].tolist(), model.llama.cfg.eos_token_ids)
        assert ours[row] == expected, row
    assert min(map(len, ours)) > 1  # not one EOS compared with another
    with pytest.raises(UserError, match="holds 16 image placeholders, the image fills 4"):
        generate(model, prompts, max_new_tokens=2, images=images[:, :32, :32])  # a 2 x 2 grid of patches


def test_extract_with_an_image_equals_transformers(tmp_path, capsys):
    hf = save_hf_llava("siglip", tmp_path / "hf", seed=5)
    save_word_tokenizer(tmp_path / "hf", TEXT["vocab_size"])
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    text = "t40 t41 t300 t7"
    assert cli.main(["extract", "--model", str(tmp_path / "ours"), "--task", "NER", "--text", text, "--image",
                     str(PHOTO), "--no-constrained", "--max-new-tokens", "6"]) == 0
    output = json.loads(capsys.readouterr().out)["output"]

    tokenizer = load_tokenizer(tmp_path / "ours" / "llama")
    _, preprocess = load_multimodal_model(tmp_path / "ours")
    # BOS, the picture's placeholders, then the rendered text: the picture comes first.
    tokens = [1, *[IMAGE_TOKEN] * IMAGE_TOKENS, *tokenizer.encode(render_input(text, "NER"), add_special_tokens=False)]
    image = prepare(decode(PHOTO), preprocess)[0]
    with torch.no_grad():
        made = hf.generate(input_ids=torch.tensor([tokens]), pixel_values=torch.from_numpy(
            image[None].transpose(0, 3, 1, 2).copy()), max_new_tokens=6, do_sample=False)
    assert output == tokenizer.decode(cut_at_eos(made[0, len(tokens):].tolist(), (2,)), skip_special_tokens=True)
    assert output.strip()

    with pytest.raises(UserError, match="no vision encoder"):
        extract(tmp_path / "ours" / "llama", text, "NER", image=PHOTO)

    # `eval` reads each record with its own image: the same outputs as `extract` with that image.
    (tmp_path / "images").mkdir()
    photo = decode(PHOTO)
    pictures = {"upright": photo, "flipped": photo[::-1].copy(), "inverted": 255 - photo, "dark": photo // 8}
    for name, picture in pictures.items():
        Image.fromarray(picture).save(tmp_path / "images" / f"{name}.png")
    golds = [Record(text, "NER", items=(("PER", "t40"),), id=name, grounding=Grounding(name, 0, 0, ((),)))
             for name in pictures]
    write_jsonl(golds, tmp_path / "gold.jsonl")
    assert cli.main(["eval", "--model", str(tmp_path / "ours"), "--data", str(tmp_path / "gold.jsonl"), "--images",
                     str(tmp_path / "images"), "--no-constrained", "--max-new-tokens", "6", "--no-progress",
                     "--out", str(tmp_path / "eval")]) == 0
    predicted = [json.loads(line)["output"] for line in (tmp_path / "eval" / "predictions.jsonl").open()]
    expected = [extract(tmp_path / "ours", text, "NER", image=tmp_path / "images" / f"{name}.png",
                        max_new_tokens=6).output for name in pictures]
    assert predicted == expected and len(set(expected)) > 1  # the pictures lead some outputs apart
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(tmp_path / "ours"), "--data", str(tmp_path / "gold.jsonl")]) == 2
    assert "such a model needs it" in capsys.readouterr().err


def test_sharded_forward_equals_one_device(tmp_path):
    save_hf_llava("siglip", tmp_path / "hf", seed=2)
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    model, preprocess = load_multimodal_model(tmp_path / "ours")
    images = photos(preprocess)
    tokens = np.stack([prompt(), prompt()])
    single = np.asarray(jax.jit(lambda m, t, i: m(t, i)[0])(model, tokens, images))

    mesh = sharding.make_mesh((2, 2, 2))  # data, fsdp, tensor over the suite's 8 CPU devices
    graphdef, state = nnx.split(model)
    placed = jax.device_put(nnx.to_pure_dict(state), sharding.param_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, placed)
    with jax.set_mesh(mesh):
        sharded = jax.jit(lambda s, t, i: nnx.merge(graphdef, s)(t, i)[0])(state, tokens, images)
    assert len(state["projector"]["out"][...].sharding.device_set) > 1
    np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-4, rtol=1e-4)


def test_placeholder_count_is_checked():
    check_placeholders(np.stack([prompt(), prompt()]), IMAGE_TOKEN, IMAGE_TOKENS)
    short = prompt()[None, 1:].copy()
    short[0, 5] = 9  # one placeholder fewer
    with pytest.raises(UserError, match="row 0 holds 15 image placeholders, the image fills 16"):
        check_placeholders(short, IMAGE_TOKEN, IMAGE_TOKENS)


def test_unsupported_llava_settings_are_refused(tmp_path):
    save_hf_llava("clip", tmp_path / "hf")
    config = (tmp_path / "hf" / "config.json")
    original = config.read_text()
    for old, new, message in [('"vision_feature_select_strategy": "default"', '"vision_feature_select_strategy": '
                               '"full"', "vision_feature_select_strategy='full' with a clip tower"),
                              ('"projector_hidden_act": "gelu"', '"projector_hidden_act": "relu"',
                               "projector_hidden_act='relu' is not supported")]:
        assert old in original
        config.write_text(original.replace(old, new))
        with pytest.raises(UserError, match=message):
            llava.convert(tmp_path / "hf", tmp_path / "out", overwrite=True)


def test_image_batches_put_the_placeholders_after_bos_and_keep_them_when_the_prompt_is_cut(tmp_path):
    synth_picture.synthesize(tmp_path / "corpus", 12, seed=1)
    records = load_source([str(tmp_path / "corpus" / "train.jsonl")])[1].records
    tokenizer = ByteTokenizer()
    preprocess = Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "squash")
    images = ImageSource(tmp_path / "corpus" / "images", preprocess)
    for seq_len in (128, 60):  # the second cuts every prompt (the text alone is longer than 60 - 16 - answer)
        pipeline = ImageRowsPipeline(records, tokenizer, images, PipelineConfig(seq_len, len(records), shuffle=False),
                                     (IMAGE_TOKEN, IMAGE_TOKENS))
        (batch,) = pipeline.one_epoch()
        for row, (index,) in enumerate(pipeline.epoch_layout(0)[1]):  # one record a row, as packing placed them
            record = records[index]
            tokens, mask = batch["tokens"][row], batch["loss_mask"][row]
            plain = encode(record, tokenizer, seq_len, EncodeStats())
            assert tokens[0] == tokenizer.bos_id and (tokens[1:1 + IMAGE_TOKENS] == IMAGE_TOKEN).all()
            assert (tokens == IMAGE_TOKEN).sum() == IMAGE_TOKENS and not mask[:1 + IMAGE_TOKENS].any()
            answer = plain.tokens[plain.loss_mask == 1]
            assert tokens[mask == 1].tolist() == answer.tolist()  # the target whole, the prompt cut if need be
            np.testing.assert_array_equal(batch["image"][row, 0], images.load(record.grounding.image)[0])
        assert (pipeline.stats.prompts_cut > 0) == (seq_len == 60)


def test_served_oie_requests_read_image_url_parts_as_extract_reads_the_image(tmp_path):
    import asyncio
    import base64

    import aiohttp

    from tests.test_serve import TINY_TEMPLATE, post, server

    save_hf_llava("clip", tmp_path / "hf", seed=6)
    save_word_tokenizer(tmp_path / "hf", TEXT["vocab_size"])
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=TINY_TEMPLATE)))
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    text = "t40 t41 t300 t7"
    expected = extract(tmp_path / "ours", text, "NER", image=PHOTO, max_new_tokens=6).output
    data_url = "data:image/jpeg;base64," + base64.b64encode(PHOTO.read_bytes()).decode()

    def request(*parts):
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}],
                "oie": {"task": "NER", "constrained": False}, "max_tokens": 6}

    async def scenario(url):
        async with aiohttp.ClientSession() as session:
            chat = url + "/v1/chat/completions"
            return [await post(session, chat, request({"type": "image_url", "image_url": {"url": where}}))
                    for where in (data_url, str(PHOTO), "https://example.com/x.jpg")]

    with server(tmp_path / "ours") as (url, _):
        by_data_url, by_path, by_network = asyncio.run(scenario(url))
    assert by_data_url[0] == 200 and by_data_url[1]["choices"][0]["message"]["content"] == expected
    assert by_path[0] == 200 and by_path[1]["choices"][0]["message"]["content"] == expected
    assert by_network[0] == 400 and "network" in by_network[1]["error"]["message"]


@pytest.mark.parametrize("preset", ["mobilenet-v2", "clip-vit-b32"])
def test_image_tokens_count_the_cells_of_the_encoders_grid(preset):
    cfg = encoders.preset(preset)
    if preset != "mobilenet-v2":  # the grid depends on the patches alone: a narrow, one-layer tower
        cfg = cfg.replace(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: encoders.build(cfg, nnx.Rngs(0))))  # shapes alone
    for size in [(128, 128), (100, 97), (224, 64)]:  # MobileNetV2 counts a partial cell, a ViT whole patches
        grid = jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x).grid, state,
                              jax.ShapeDtypeStruct((1, *size, 3), np.float32))
        assert MultimodalConfig(0).image_tokens(cfg, size) == grid.shape[1] * grid.shape[2], size
        assert MultimodalConfig(0, pool=2).image_tokens(cfg, size) == (grid.shape[1] // 2) * (grid.shape[2] // 2)
