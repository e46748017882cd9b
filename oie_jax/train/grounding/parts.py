"""Training grounded NER: the LLaMA, the vision encoder and the grounding head as one parameter tree
{"llama", "vision", "head"}. The parts named in `trainable` are the train state (gradients and optimizer
state for them only); the others come into the step as frozen arrays, so that a frozen 8B LLaMA costs
its forward pass and nothing more. A LLaMA with LoRA adapters (`setup.llama.lora`) is split in two: its
adapters train, its base is frozen (`split`).

The functions below the setup serve any setup of parts: one with `parts`, `trainable`, `llama` (its
LoRA), `modules()` and `objective(params, batch)` (the multimodal LLaMA's, `train/multimodal.py`).

The objective per batch: KL to H-Index's target per entity, plus L1 and 1 - GIoU per gold box (weighted
as DETR does, 5 and 2), plus the LLaMA's next-token loss when the LLaMA is trained (it must keep
extracting the entities it is asked to ground).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.models import encoders, lora
from oie_jax.models.checkpoint import model_from_params
from oie_jax.models.config import LlamaConfig
from oie_jax.models.grounding import GroundingConfig, GroundingHead, entity_queries, grounding_losses
from oie_jax.models.llama import Llama
from oie_jax.train.loss import LossSums, chunked_token_losses
from oie_jax.train.step import TrainState, init_state

PARTS = ("llama", "vision", "head")
FEATURE_FIELDS = ("queries", "grid")


@dataclasses.dataclass(frozen=True)
class GroundingSetup:
    llama: LlamaConfig
    vision: Any  # ViTConfig or MobileNetV2Config
    head: GroundingConfig
    trainable: tuple[str, ...] = ("head",)
    lm_weight: float = 1.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0

    parts = PARTS

    def __post_init__(self):
        if "head" not in self.trainable or not set(self.trainable) <= set(PARTS):
            raise UserError(f"trainable parts {self.trainable}: the head and any of {PARTS}")

    def modules(self) -> dict[str, Callable[[nnx.Rngs], nnx.Module]]:
        return {"llama": lambda rngs: Llama(self.llama, rngs=rngs),
                "vision": lambda rngs: encoders.build(self.vision, rngs),
                "head": lambda rngs: GroundingHead(self.head, rngs=rngs)}

    def objective(self, params: dict, batch: dict) -> tuple[jax.Array, dict]:
        return objective(self, params, batch)


def abstract_state(setup, part: str) -> nnx.State:
    """A part's parameters as shapes, with their logical axes."""
    return nnx.state(nnx.eval_shape(lambda: setup.modules()[part](nnx.Rngs(0))))


def init_part(setup, part: str, seed: int) -> dict:
    return nnx.to_pure_dict(nnx.state(setup.modules()[part](nnx.Rngs(seed))))


def merged(setup, part: str, params: dict) -> nnx.Module:
    if part == "llama":
        return model_from_params(setup.llama, params)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: setup.modules()[part](nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def features(setup: GroundingSetup, params: dict, batch: dict) -> dict:
    """What the head reads: the entity queries and the image grid (FEATURE_FIELDS) of a batch."""
    llama = merged(setup, "llama", params["llama"])
    hidden, _ = llama.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    grid = merged(setup, "vision", params["vision"])(batch["image"]).grid
    return {"queries": entity_queries(hidden, batch["spans"]), "grid": grid}


def make_feature_step(setup: GroundingSetup) -> Callable:
    """feature_step(frozen, batch) -> FEATURE_FIELDS: with the LLaMA and the encoder frozen, the same for
    every epoch, so a run may compute them once (`GroundingPipeline.cache_features`)."""
    return lambda frozen, batch: features(setup, frozen, batch)


def forward(setup: GroundingSetup, params: dict, batch: dict):
    """(grounding output, the LLaMA's loss sums, grounding loss sums) of a batch: `data.grounding` fields,
    or with the features computed already, FEATURE_FIELDS instead of tokens and images."""
    lm = LossSums(*(jnp.float32(0),) * 3)  # a frozen LLaMA's next-token loss changes nothing
    if "queries" in batch:
        queries, grid = batch["queries"], batch["grid"]
    else:
        llama = merged(setup, "llama", params["llama"])
        hidden, _ = llama.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
        if "llama" in setup.trainable:
            lm = chunked_token_losses(hidden, llama.logits, batch["tokens"], batch["loss_mask"])
        queries = entity_queries(hidden, batch["spans"])
        grid = merged(setup, "vision", params["vision"])(batch["image"]).grid
    out = merged(setup, "head", params["head"])(queries, grid, batch.get("proposals"), batch.get("proposal_mask"))
    usable = batch["entity_mask"] & batch["image_ok"][:, None]  # an unreadable image grounds nothing
    sums = grounding_losses(out, batch["gold_boxes"], batch["gold_mask"] & usable[..., None], usable,
                            grid.shape[1:3], setup.head.cells)
    return out, lm, sums


def objective(setup: GroundingSetup, params: dict, batch: dict) -> tuple[jax.Array, dict]:
    _, lm, sums = forward(setup, params, batch)
    kl = sums.kl / jnp.maximum(sums.entities, 1)
    l1, giou = (value / jnp.maximum(sums.boxes, 1) for value in (sums.l1, sums.giou))
    cross_entropy = lm.cross_entropy / jnp.maximum(lm.tokens, 1)
    loss = kl + setup.l1_weight * l1 + setup.giou_weight * giou
    metrics = {"kl": kl, "l1": l1, "giou": giou, "z_loss": jnp.float32(0), "target_tokens": jnp.float32(1),
               "entities": sums.entities, "tokens": (batch["segment_ids"] > 0).sum()}
    if "llama" in setup.trainable:
        loss = loss + setup.lm_weight * cross_entropy
        metrics["lm_loss"] = cross_entropy
    metrics["loss"] = loss
    return loss, metrics


def split(setup, tree: dict) -> tuple[dict, dict]:
    """(trained, frozen) of a tree over the parts (parameters, or their shardings or shapes): whole parts,
    but of a LoRA LLaMA the adapters train and the base stays frozen. `lora.join` puts them together."""
    trained = {p: tree[p] for p in setup.parts if p in setup.trainable and p in tree}
    frozen = {p: tree[p] for p in setup.parts if p not in setup.trainable and p in tree}
    if setup.llama.lora is not None and "llama" in tree:
        trained["llama"], frozen["llama"] = lora.split(tree["llama"])
    return trained, frozen


def make_train_step(setup, optimizer: optax.GradientTransformation) -> Callable:
    """train_step(state, frozen, batch) -> (state, metrics); `state.params` holds the trainable parts."""

    def train_step(state: TrainState, frozen: dict, batch: dict):
        def loss_fn(trainable):
            return setup.objective(lora.join(frozen, trainable), batch)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    return train_step


def make_eval_step(setup) -> Callable:
    """eval_step(params, frozen, batch) -> (loss, 1): summed over batches and divided, the mean batch loss."""

    def eval_step(params, frozen, batch):
        return setup.objective(lora.join(frozen, params), batch)[0], jnp.float32(1)

    return eval_step


def part_shardings(setup, mesh, rules=sharding.DEFAULT_RULES, parts=None) -> dict:
    return {part: sharding.param_shardings(abstract_state(setup, part), mesh, rules)
            for part in (parts or setup.parts)}


def state_shardings(setup, optimizer, mesh, rules=sharding.DEFAULT_RULES,
                    placed: dict | None = None) -> TrainState:
    """The trainable parts by the logical rules (or as `placed`, `part_shardings` computed already), their
    optimizer moments alike, scalars replicated."""
    placed = placed or part_shardings(setup, mesh, rules, setup.trainable)
    params = split(setup, placed)[0]
    abstract = split(setup, {p: nnx.to_pure_dict(abstract_state(setup, p)) for p in setup.trainable})[0]
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_utils.tree_map_params(
        optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract), params,
        transform_non_params=lambda _: replicated)
    return TrainState(params, opt_state, replicated)


def create_state(optimizer, shardings: TrainState, params: dict) -> TrainState:
    """The train state of the trainable parts `params` (already placed; donated)."""
    return jax.jit(lambda p: init_state(p, optimizer), in_shardings=(shardings.params,), out_shardings=shardings,
                   donate_argnums=0)(params)


def abstract_train_state(setup, optimizer, shardings: TrainState) -> TrainState:
    abstract = split(setup, {p: nnx.to_pure_dict(abstract_state(setup, p)) for p in setup.trainable})[0]
    state = jax.eval_shape(lambda params: init_state(params, optimizer), abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)

