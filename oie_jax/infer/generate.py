"""Batched generation with a preallocated KV cache, compiled once per (batch, length, budget) bucket.

Prompts are left-padded into a bucket (batch rounded up to a power of two, prompt length to a power of
two or 1.5 times one: `length_bucket`), and the cache and output have room for the largest budget
rounded up the same way, each row stopping at its own budget (a traced value), so one compiled program
serves every batch that falls into the bucket (for one model, set of EOS ids and kind of sampling).
Positions follow the real tokens of each row, as in Hugging Face `generate`, and each row stops on its
own at any of the EOS ids (`stop_ids`: one rule for every caller). A model whose parameters are sharded
over a mesh generates with its rows split over the mesh's batch axes, on one process or several (every
process passes the same prompts).
"""

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.infer import constrain
from oie_jax.models.config import LlamaConfig
from oie_jax.models.llama import Llama, init_cache, unstack_layers
from oie_jax.models.multimodal import MultimodalLlama, check_placeholders

MIN_LENGTH_BUCKET = 16
_traces = {"count": 0}
_sink = {"observe": None}  # who sees an observed generation's tokens, step by step (set around each call)


def _observe(step, tokens) -> np.ndarray:
    """Host side of the per-step callback: each step's tokens as they are made; returns the rows to stop."""
    stops = np.zeros(tokens.shape, bool)
    if _sink["observe"] is not None:
        stops = _sink["observe"](int(step), np.asarray(tokens))
    return stops


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off (not computed)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise UserError(f"invalid sampling settings {self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1")


def text_model(model: Llama | MultimodalLlama) -> Llama:
    """The LLaMA of a model: itself, or a multimodal model's."""
    return model.llama if isinstance(model, MultimodalLlama) else model


def stop_ids(cfg: LlamaConfig, tokenizer=None) -> tuple[int, ...]:
    """Where generation ends: any end-of-sequence id of the model (config.json and, since the import,
    generation_config.json) or of its tokenizer."""
    ids = dict.fromkeys(cfg.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_id is not None:
        ids[tokenizer.eos_id] = None
    return tuple(ids)


def trace_count() -> int:
    """How many times the generation program has been traced (= compiled) in this process."""
    return _traces["count"]


def bucket(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def length_bucket(n: int) -> int:
    """A prompt length or a room for new tokens, rounded up to a power of two or 1.5 times one (..., 64,
    96, 128, 192, ...), at least 16: each decoding step attends to every position of the cache (prompt
    bucket + room), and whole powers of two made SmolLM2's batch-16 eval of the sample test 13% slower
    (95 against 84 tokens/s) on this CPU; the half steps cost at most twice the compiled programs."""
    power = bucket(n)
    return max(MIN_LENGTH_BUCKET, power * 3 // 4 if n <= power * 3 // 4 else power)


@dataclasses.dataclass(frozen=True)
class Filters:
    """The static part of sampling: what the compiled program computes at all."""

    greedy: bool
    top_k: int  # 0: off
    nucleus: bool  # top_p < 1


def filters_of(sampling: Sampling, vocab_size: int) -> Filters:
    return Filters(greedy=sampling.temperature == 0, top_k=min(sampling.top_k, vocab_size),
                   nucleus=sampling.top_p < 1.0)


def nucleus(ordered, top_p):
    """Logits sorted in descending order, with everything after the smallest prefix whose probability
    mass reaches top_p set to -inf."""
    probs = jax.nn.softmax(ordered, axis=-1)
    return jnp.where(jnp.cumsum(probs, axis=-1) - probs < top_p, ordered, -jnp.inf)


def categorical(key, logits):
    """One draw per row: with one key for the batch, or with each row's own key (a (batch,) key array)."""
    if key.ndim == 0:
        return jax.random.categorical(key, logits, axis=-1)
    return jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, logits)


def sample_tokens(logits, key, temperature, top_p, filters: Filters):
    """One token per row from float32 logits (batch, vocab); temperature and top_p are traced."""
    if filters.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / temperature
    if filters.top_k:  # top-p then needs only the k values top_k returns sorted, not a sort of the vocabulary
        values, indices = jax.lax.top_k(scaled, filters.top_k)
        if filters.nucleus:
            values = nucleus(values, top_p)
        choice = categorical(key, values)
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if filters.nucleus:
        kept = nucleus(jnp.sort(scaled, axis=-1)[:, ::-1], top_p)
        threshold = jnp.min(jnp.where(jnp.isfinite(kept), kept, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return categorical(key, scaled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "room", "filters", "eos_ids", "pad_id", "observe"))
def _generate(graphdef, state, layers, tokens, prompt_mask, budgets, key_data, temperature, top_p, constraint, images,
              *, room, filters, eos_ids, pad_id, observe=False):
    """`budgets` (batch,): each row's new tokens, at most `room` (the cache's and the output's)."""
    _traces["count"] += 1  # runs once per trace, i.e. per compilation
    model = nnx.merge(graphdef, state)
    inputs_embeds = None
    if images is not None:  # a MultimodalLlama: the images fill the prompt's placeholders, the rest is its LLaMA's
        inputs_embeds = model.prompt_embeds(tokens, images)
        model = model.llama
    keys = jax.random.wrap_key_data(key_data)  # each row its own: a row's sample does not depend on the others
    split = jax.vmap(jax.random.split)
    batch, prompt_length = tokens.shape
    cache = init_cache(model.cfg, batch, prompt_length + room)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    hidden, cache = model.hidden_states(tokens, positions, prompt_mask, cache, layers, inputs_embeds=inputs_embeds)
    logits = model.logits(hidden[:, -1:])  # only the last position picks a token
    eos = jnp.asarray(eos_ids, jnp.int32)

    def pick(logits, key, done, at, step):  # at: each row's automaton state (unused without constraint)
        if constraint is not None:  # only the tokens that keep each row a valid prefix (infer/constrain.py)
            tables, accept, _, finish, trie = constraint
            allowed, ends = constrain.allowed(tables, accept, at, trie, eos_ids, finish, budgets - step)
            logits = jnp.where(allowed, logits, -jnp.inf)
        token = sample_tokens(logits, key, temperature, top_p, filters)
        token = jnp.where(done, pad_id, token)
        if constraint is not None:
            at = jnp.where(done, at, jnp.take_along_axis(ends, token[:, None], axis=1)[:, 0])
        return token, done | jnp.isin(token, eos) | (step + 1 >= budgets), at

    pair = split(keys)
    keys, first_keys = pair[:, 0], pair[:, 1]
    empty_row = prompt_mask.sum(axis=1) == 0  # bucket padding: never blocks the early exit
    at = constraint[2] if constraint is not None else jnp.zeros((batch,), jnp.int32)
    def observed(step, token, done):
        """With `observe`, each step's tokens go to the host as they are made (streaming, stop strings), and
        the rows it answers True for end here (on a CPU the calls arrive in order, while the loop runs)."""
        if not observe:
            return done
        stops = io_callback(_observe, jax.ShapeDtypeStruct((batch,), jnp.bool_), step, token)
        return done | stops

    token, done, at = pick(logits[:, -1], first_keys, empty_row, at, 0)
    done = observed(0, token, done)
    out = jnp.full((batch, room), pad_id, jnp.int32).at[:, 0].set(token)

    def keep_going(carry):
        step, _, _, _, done, _, _, _ = carry
        return (step < room) & ~jnp.all(done)

    def step_once(carry):
        step, cache, token, position, done, out, keys, at = carry
        pair = split(keys)
        keys, step_keys = pair[:, 0], pair[:, 1]
        logits, cache = model(token[:, None], position[:, None], jnp.ones((batch, 1), jnp.int32), cache, layers)
        token, done, at = pick(logits[:, 0], step_keys, done, at, step)
        done = observed(step, token, done)
        return step + 1, cache, token, position + 1, done, out.at[:, step].set(token), keys, at

    carry = (jnp.int32(1), cache, token, positions[:, -1] + 1, done, out, keys, at)
    return jax.lax.while_loop(keep_going, step_once, carry)[5]


def generate(model: Llama | MultimodalLlama, prompts: list[list[int]], max_new_tokens: "int | Sequence[int]",
             sampling: Sampling = Sampling(), eos_ids=None, pad_id: int | None = None, batch_size: int = 8, rules=None,
             constraints: "Constraints | None" = None, on_tokens=None,
             row_seeds: list[tuple[int, int]] | None = None, images: np.ndarray | None = None) -> list[list[int]]:
    """New tokens for each prompt (token ids), at most `max_new_tokens` (one budget for all, or one per
    prompt), up to and including the first EOS id (default: the config's; callers with a tokenizer pass
    `stop_ids(cfg, tokenizer)`). `rules` place the rows of a sharded model (default: the rules of the
    current `sharding.activation_rules` context).
    `constraints` restricts each prompt's output to its automaton (format-constrained decoding).
    `on_tokens(prompt_indices, step, tokens)` receives each step's tokens while they are made (a row's
    tokens after its EOS, and past its budget, mean nothing) and may return, per row, whether it ends
    there (a stop string it completed). A sampled row draws from its own key,
    `fold_in(key(seed), salt)` with each prompt's `row_seeds` (default: the sampling's seed and the
    prompt's index), so its sample does not depend on the prompts that share its batch. `images` (a
    multimodal model's, prepared: one image per prompt (prompts, height, width, channels) or several
    (prompts, images, height, width, channels)) fill each prompt's image placeholders at the prefill."""
    if constraints is not None and len(constraints.automata) != len(prompts):
        raise ValueError(f"{len(constraints.automata)} automata for {len(prompts)} prompts")
    if any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt: every prompt needs at least one token")
    budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (len(prompts),))
    if budgets.min(initial=1) < 1 or batch_size < 1:
        raise UserError(f"max_new_tokens and batch_size must be at least 1 (got {budgets.min()}, {batch_size})")
    llama = text_model(model)
    if images is not None:
        if llama is model:
            raise UserError("images were given to a model without a vision encoder")
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        check_placeholders(prompts, model.cfg.image_token_id, model.image_tokens(images.shape[1:]))
    else:
        model = llama  # text-only prompts: the LLaMA alone
    cfg = llama.cfg
    outside = [t for p in prompts for t in p if not 0 <= t < cfg.vocab_size]
    if outside:
        raise UserError(f"token id {outside[0]} is outside the model's vocabulary of {cfg.vocab_size} "
                        "(is the tokenizer the model's own?)")
    eos_ids = tuple(cfg.eos_token_ids if eos_ids is None else eos_ids)
    pad_id = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    longest = max(len(p) + int(b) for p, b in zip(prompts, budgets))
    if longest > cfg.max_position_embeddings:
        print(f"warning: {longest} positions exceed max_position_embeddings={cfg.max_position_embeddings}",
              file=sys.stderr)
    graphdef, state = nnx.split(model)
    placement = Placement.of(state, rules or sharding.current_rules())
    # XLA fuses a layer's slice of the stacked parameters into its matmuls on GPU and TPU; on CPU it
    # copies them at every token, so there each layer gets arrays of its own (for this call).
    layers = unstack_layers(llama) if jax.devices()[0].platform == "cpu" else None
    filters = filters_of(sampling, cfg.vocab_size)
    seeds = np.asarray(row_seeds if row_seeds is not None else [(sampling.seed, i) for i in range(len(prompts))],
                       np.uint32).reshape(len(prompts), 2)
    key_data = np.asarray(jax.random.key_data(jax.vmap(lambda seed, salt: jax.random.fold_in(
        jax.random.key(seed), salt))(seeds[:, 0], seeds[:, 1])))
    # Similar lengths share a batch: less padding, fewer length buckets.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    stopped_at: dict[int, int] = {}  # prompt index -> the step at which on_tokens ended it
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        tokens, mask = left_pad([prompts[i] for i in rows], pad_id, placement.row_multiple)
        batch_budgets = np.zeros((tokens.shape[0],), np.int32)  # padding rows: none (done from the start)
        batch_budgets[:len(rows)] = budgets[rows]
        batch_keys = np.zeros((tokens.shape[0], *key_data.shape[1:]), key_data.dtype)  # padding rows: any key
        batch_keys[:len(rows)] = key_data[rows]
        batch_images = None
        if images is not None:  # padding rows: blank images, no placeholders to fill
            batch_images = np.zeros((tokens.shape[0], *images.shape[1:]), np.float32)
            batch_images[:len(rows)] = images[rows]
            batch_images = placement.rows(batch_images)
        constraint = None
        if constraints is not None:
            stacked = constrain.stack([constraints.automata[i] for i in rows], tokens.shape[0])
            constraint = (*map(placement.rows, stacked), constraints.tokens.arrays())
        if on_tokens is not None:
            def observe(step, made, rows=rows):
                stops = np.zeros(made.shape, bool)
                answer = on_tokens(rows, step, made[:len(rows)])
                if answer is not None:
                    stops[:len(rows)] = answer
                    for row in np.flatnonzero(stops):
                        stopped_at.setdefault(rows[row], step)  # its output ends with this step's token
                return stops

            _sink["observe"] = observe
        # The scalars as numpy: the same value on every process, replicated on the mesh.
        try:
            with placement.context():
                out = _generate(graphdef, state, layers, placement.rows(tokens), placement.rows(mask),
                                placement.rows(batch_budgets), placement.rows(batch_keys),
                                np.float32(sampling.temperature), np.float32(sampling.top_p), constraint,
                                batch_images, room=length_bucket(int(batch_budgets.max())),
                                filters=filters, eos_ids=eos_ids, pad_id=pad_id, observe=on_tokens is not None)
            out = placement.gather(out)  # (waits for the run: its callbacks need the sink until then)
        finally:
            _sink["observe"] = None
        for row, i in enumerate(rows):
            results[i] = cut_at_eos(out[row].tolist()[:stopped_at.get(i, budgets[i] - 1) + 1], eos_ids)
            if constraints is not None:
                results[i] = constrain.complete_prefix(constraints.automata[i], results[i], constraints.pieces,
                                                       eos_ids)
    return results


@functools.lru_cache(maxsize=4)
def vocabulary(tokenizer, vocab_size: int) -> tuple[list[bytes], "constrain.TokenTrie"]:
    """Each token id's bytes and their trie, made once per tokenizer (about 2 s for SmolLM2's 49k tokens on
    this CPU), not at every constrained `generate_outputs` call (each dev F1 of a run makes one)."""
    pieces = tokenizer.token_bytes()
    return pieces, constrain.TokenTrie.of(pieces, vocab_size)


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Format-constrained decoding for a `generate` call: one automaton per prompt, and the bytes of
    the vocabulary's tokens."""

    automata: list
    pieces: list[bytes]  # each token id's bytes (`Tokenizer.token_bytes()`)
    tokens: "constrain.TokenTrie"

    @classmethod
    def of(cls, automata: list, tokenizer, vocab_size: int) -> "Constraints":
        return cls([], *vocabulary(tokenizer, vocab_size)).with_automata(automata)

    def with_automata(self, automata: list) -> "Constraints":
        """These automata over this vocabulary, each with its `finish` in its tokens: outputs close within
        the budget."""
        return dataclasses.replace(self, automata=[constrain.finishing(auto, self.tokens) for auto in automata])


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a batch of generation lives: the mesh of the parameters (rows split over its batch
    axes), or nowhere in particular for a model on one device."""

    mesh: jax.sharding.Mesh | None
    rules: tuple

    @classmethod
    def of(cls, state, rules) -> "Placement":
        meshes = {leaf.sharding.mesh for leaf in jax.tree.leaves(state)
                  if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding)}
        mesh = next((m for m in meshes if m.size > 1), None)
        return cls(mesh, tuple(tuple(rule) for rule in rules))

    @property
    def row_sharding(self) -> jax.sharding.NamedSharding:
        return sharding.batch_sharding(self.mesh, self.rules)

    @property
    def row_multiple(self) -> int:
        return 1 if self.mesh is None else sharding.axis_size(self.mesh, self.row_sharding.spec[0])

    def rows(self, array: np.ndarray):
        if self.mesh is None:
            return array
        return jax.make_array_from_callback(array.shape, self.row_sharding, lambda index: array[index])

    def context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(sharding.activation_rules(self.rules))
        return stack

    @staticmethod
    def gather(out: jax.Array) -> np.ndarray:
        if out.is_fully_addressable:
            return np.asarray(out)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(out, tiled=True))


def left_pad(prompts: list[list[int]], pad_id: int, row_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of shape (bucket(batch) rounded up to `row_multiple`, length_bucket(longest prompt));
    padding rows are all-zero masks."""
    batch = -(-bucket(len(prompts)) // row_multiple) * row_multiple
    length = length_bucket(max(map(len, prompts)))
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = 1
    return tokens, mask


def cut_at_eos(tokens: list[int], eos_ids) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:i + 1]
    return tokens
