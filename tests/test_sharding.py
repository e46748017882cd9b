"""Logical axis rules on 8 virtual CPU devices: the llama3-8b layout, checked abstractly (no 8B allocation)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.models.checkpoint import abstract_model
from oie_jax.models.config import preset
from oie_jax.models.llama import Llama

EXPECTED_8B = {
    ("embed",): ((128256, 4096), P("tensor", "fsdp")),
    ("lm_head",): ((4096, 128256), P("fsdp", "tensor")),
    ("final_norm", "scale"): ((4096,), P(None)),
    ("layers", "attn", "q"): ((32, 4096, 32, 128), P(None, "fsdp", "tensor", None)),
    ("layers", "attn", "k"): ((32, 4096, 8, 128), P(None, "fsdp", "tensor", None)),
    ("layers", "attn", "v"): ((32, 4096, 8, 128), P(None, "fsdp", "tensor", None)),
    ("layers", "attn", "o"): ((32, 32, 128, 4096), P(None, "tensor", None, "fsdp")),
    ("layers", "mlp", "gate"): ((32, 4096, 14336), P(None, "fsdp", "tensor")),
    ("layers", "mlp", "up"): ((32, 4096, 14336), P(None, "fsdp", "tensor")),
    ("layers", "mlp", "down"): ((32, 14336, 4096), P(None, "tensor", "fsdp")),
    ("layers", "attn_norm", "scale"): ((32, 4096), P(None, None)),
    ("layers", "mlp_norm", "scale"): ((32, 4096), P(None, None)),
}


def flat(tree) -> dict:
    return {tuple(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_llama3_8b_layout_on_fsdp4_tensor2():
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((1, 4, 2), sharding.MESH_AXES)
    cfg = preset("llama3-8b")
    shardings = sharding.param_shardings(nnx.state(abstract_model(cfg)), mesh)
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))), out_shardings=shardings)
    params = flat(jax.eval_shape(init))
    assert set(params) == set(EXPECTED_8B)
    for path, (shape, spec) in EXPECTED_8B.items():
        leaf = params[path]
        assert leaf.shape == shape and leaf.dtype == np.dtype("bfloat16"), path
        assert leaf.sharding.spec == spec, path
    # Every weight matrix is split 8 ways: each device holds 1/8 of it.
    q = params[("layers", "attn", "q")]
    assert q.sharding.shard_shape(q.shape) == (32, 1024, 16, 128)
    total = sum(np.prod(p.shape) for p in params.values())
    per_device = sum(np.prod(p.sharding.shard_shape(p.shape)) for p in params.values())
    assert total == cfg.num_params() and abs(per_device / total - 1 / 8) < 1e-3


def test_rules_reject_bad_layouts():
    with pytest.raises(UserError, match="no sharding rule"):
        sharding.logical_to_spec(("embed", "experts"))
    with pytest.raises(UserError, match="twice"):
        sharding.logical_to_spec(("embed", "mlp"), rules=(("embed", "tensor"), ("mlp", "tensor")))
    mesh = jax.make_mesh((1, 1, 8), sharding.MESH_AXES)
    state = nnx.state(abstract_model(preset("smollm2-135m")))  # 9 heads do not split 8 ways
    with pytest.raises(UserError, match="does not split 8 ways"):
        sharding.param_shardings(state, mesh)
