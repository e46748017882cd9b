"""The train state, its shardings, and the train and eval steps (pure functions of arrays, compiled
with `jit_on_mesh`)."""

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax import sharding
from oie_jax.models import lora
from oie_jax.models.checkpoint import abstract_model, model_from_params
from oie_jax.models.config import LlamaConfig
from oie_jax.models.llama import Llama
from oie_jax.train.loss import LossSums, chunked_token_losses


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: dict  # the trained weights in cfg.param_dtype (a LoRA model's adapters only; see `trainable`)
    opt_state: optax.OptState
    step: jax.Array


def init_state(params: dict, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def init_params(cfg: LlamaConfig, seed: int) -> dict:
    return nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed))))


def trainable(cfg: LlamaConfig, params: dict) -> dict:
    """The part of a parameter tree a run trains: a LoRA model's adapters, else all of it."""
    return lora.split(params)[0] if cfg.lora else params


def frozen(cfg: LlamaConfig, params: dict) -> dict:
    """The part a run keeps fixed and passes into its steps: a LoRA model's base, else nothing."""
    return lora.split(params)[1] if cfg.lora else {}


def create_state(cfg: LlamaConfig, optimizer, shardings: TrainState, params: dict | None = None,
                 seed: int = 0) -> TrainState:
    """The train state born in its shardings: each device computes only its own shards, and no full
    copy ever sits on one host. Random trainable parameters from `seed` (a LoRA model's adapters: its
    base is not drawn), or `params` already placed (e.g. restored by Orbax onto `shardings.params`),
    which are donated."""
    if params is None:
        return jax.jit(lambda: init_state(trainable(cfg, init_params(cfg, seed)), optimizer),
                       out_shardings=shardings)()
    return jax.jit(lambda p: init_state(p, optimizer), in_shardings=(shardings.params,), out_shardings=shardings,
                   donate_argnums=0)(params)


def jit_on_mesh(fn, mesh, rules=sharding.DEFAULT_RULES, **jit_kwargs) -> Callable:
    """jax.jit(fn, **jit_kwargs), traced with `mesh` as the current mesh and `rules` for the model's
    activation constraints. mesh None: plain jit on the default device."""
    jitted = jax.jit(fn, **jit_kwargs)

    def call(*args):
        context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
        with context, sharding.activation_rules(rules):
            return jitted(*args)

    return call


def batch_loss(cfg: LlamaConfig, params: dict, batch: dict, z_loss: float = 0.0, loss_chunk: int = 0,
               dropout_key=None) -> LossSums:
    """Loss sums of a batch of BATCH_FIELDS arrays, the logits computed `loss_chunk` positions at a time;
    `dropout_key` turns on the adapters' dropout."""
    model = model_from_params(cfg, params)
    hidden, _ = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"],
                                    dropout_key=dropout_key)
    return chunked_token_losses(hidden, model.logits, batch["tokens"], batch["loss_mask"], z_loss, loss_chunk)


def make_eval_step(cfg: LlamaConfig, loss_chunk: int = 0) -> Callable:
    """eval_step(params, batch, frozen=None) -> (cross-entropy sum, token count): sums over batches give
    the mean loss. `params` and `frozen` as in `make_train_step`."""

    def eval_step(params, batch, frozen=None):
        sums = batch_loss(cfg, lora.join(frozen or {}, params), batch, loss_chunk=loss_chunk)
        return sums.cross_entropy, sums.tokens

    return eval_step


def state_shardings(cfg: LlamaConfig, optimizer, mesh, rules=sharding.DEFAULT_RULES) -> TrainState:
    """Trainable parameters by the logical rules; optimizer moments like their parameters; scalars
    replicated."""
    params = trainable(cfg, sharding.param_shardings(nnx.state(abstract_model(cfg)), mesh, rules))
    abstract_params = trainable(cfg, nnx.to_pure_dict(nnx.state(abstract_model(cfg))))
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_utils.tree_map_params(
        optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract_params), params,
        transform_non_params=lambda _: replicated)
    return TrainState(params, opt_state, replicated)


def frozen_shardings(cfg: LlamaConfig, mesh, rules=sharding.DEFAULT_RULES) -> dict:
    """Where the frozen parameters (`frozen`) live: by the same rules as the trained ones."""
    return frozen(cfg, sharding.param_shardings(nnx.state(abstract_model(cfg)), mesh, rules))


def make_train_step(cfg: LlamaConfig, optimizer: optax.GradientTransformation, micro_batches: int = 1,
                    z_loss: float = 0.0, loss_scale: float = 0.0, loss_chunk: int = 0, seed: int = 0) -> Callable:
    """train_step(state, batch, frozen=None) -> (state, metrics). `state.params` are the trained
    parameters (`trainable`), `frozen` the rest (a LoRA model's base: no gradient, no optimizer state;
    `seed` and the step number draw the adapters' dropout). The batch is cut into `micro_batches` equal parts
    whose gradients are summed before one update; the loss is divided by the masked tokens of the
    whole batch, so accumulation gives the update of one big batch. `loss_scale` (> 0) multiplies the
    loss before differentiation and divides the gradients after, so that float16 gradients do not
    underflow. `loss_chunk` > 0 computes the logits that many positions at a time (`loss.py`).

    Metrics: `loss` (cross-entropy per target token, without the z-loss), `z_loss`, `grad_norm`,
    `target_tokens` (tokens with a loss) and `tokens` (non-padding tokens)."""
    scale = loss_scale or 1.0

    dropout = cfg.lora is not None and cfg.lora.dropout > 0

    def objective(params, frozen, batch, dropout_key):
        sums = batch_loss(cfg, lora.join(frozen, params), batch, z_loss, loss_chunk, dropout_key)
        return (sums.cross_entropy + sums.z_loss) * scale, sums

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def train_step(state: TrainState, batch: dict, frozen: dict | None = None):
        parts = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
        step_key = jax.random.fold_in(jax.random.key(seed), state.step) if dropout else None

        def accumulate(carry, inputs):
            grads, sums = carry
            part, index = inputs
            key = None if step_key is None else jax.random.fold_in(step_key, index)
            (_, part_sums), part_grads = grad_fn(state.params, frozen or {}, part, key)
            return (jax.tree.map(jnp.add, grads, part_grads), jax.tree.map(jnp.add, sums, part_sums)), None

        start = (jax.tree.map(jnp.zeros_like, state.params), LossSums(*(jnp.float32(0),) * 3))
        (grads, sums), _ = jax.lax.scan(accumulate, start, (parts, jnp.arange(micro_batches)))
        count = jnp.maximum(sums.tokens, 1.0)
        grads = jax.tree.map(lambda g: g / (count * scale), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics = {"loss": sums.cross_entropy / count, "z_loss": sums.z_loss / count,
                   "grad_norm": optax.tree.norm(grads), "target_tokens": sums.tokens,
                   "tokens": (batch["segment_ids"] > 0).sum()}
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    return train_step
