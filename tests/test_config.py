"""Model presets and the Hugging Face config.json round trip."""

import pytest

from oie_jax.errors import UserError
from oie_jax.models.config import PRESETS, LlamaConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
    cfg = preset(name)
    assert LlamaConfig.from_hf_config(cfg.to_hf_config()) == cfg
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg


def test_preset_sizes_match_the_published_models():
    billions = {name: PRESETS[name].num_params() / 1e9 for name in PRESETS}
    assert round(billions["llama3-8b"], 2) == 8.03
    assert round(billions["llama3.2-1b"], 2) == 1.24
    assert round(billions["llama3-70b"], 1) == 70.6
    assert round(billions["llama2-13b"], 1) == 13.0
    assert round(PRESETS["smollm2-135m"].num_params() / 1e6, 1) == 134.5


def test_transformers_v5_rope_parameters_are_read():
    hf = preset("llama3.1-8b").to_hf_config()
    scaling = hf.pop("rope_scaling")
    hf["rope_parameters"] = {"rope_theta": hf.pop("rope_theta"), **scaling}
    assert LlamaConfig.from_hf_config(hf).rope_scaling == preset("llama3.1-8b").rope_scaling


def test_bad_configs():
    with pytest.raises(UserError, match="unknown model preset"):
        preset("gpt2")
    with pytest.raises(UserError, match="multiple of num_kv_heads"):
        preset("tiny", num_kv_heads=3)
    with pytest.raises(UserError, match="rope_scaling"):
        LlamaConfig.from_hf_config(dict(preset("tiny").to_hf_config(), rope_scaling={"rope_type": "yarn"}))
    with pytest.raises(UserError, match="unknown config fields"):
        LlamaConfig.from_dict(dict(preset("tiny").to_dict(), experts=8))
