"""Masked next-token cross-entropy in float32, with an optional z-loss kept apart for logging, computed
over the whole sequence or a chunk of positions at a time."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    """Sums over the masked tokens of a batch; divided by `tokens` they are means."""

    cross_entropy: jax.Array
    z_loss: jax.Array  # z_loss * log(Z)^2, the regulariser alone
    tokens: jax.Array


def shifted_targets(tokens: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(target, float mask) for every position: position t predicts token t + 1, and the mask of the
    predicted token decides whether it counts (the last position predicts nothing). The loss mask
    covers only target tokens, whose predecessor is always in the same packed segment. Shifting the
    targets rather than slicing the logits saves a copy of the largest array of the step."""
    targets = jnp.roll(tokens, -1, axis=1)
    return targets, jnp.roll(loss_mask, -1, axis=1).at[:, -1].set(0).astype(jnp.float32)


def sums_of(logits: jax.Array, targets: jax.Array, mask: jax.Array, z_loss: float = 0.0) -> LossSums:
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    cross_entropy = ((log_z - target_logits) * mask).sum()
    regulariser = (z_loss * log_z**2 * mask).sum() if z_loss else jnp.float32(0)  # keeps log Z near 0 (PaLM)
    return LossSums(cross_entropy, regulariser, mask.sum())


def token_losses(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array, z_loss: float = 0.0) -> LossSums:
    """Loss sums of logits (b, t, vocab) for the tokens they were computed from."""
    return sums_of(logits, *shifted_targets(tokens, loss_mask), z_loss)


def chunked_token_losses(hidden: jax.Array, logits_fn, tokens: jax.Array, loss_mask: jax.Array,
                         z_loss: float = 0.0, chunk: int = 0) -> LossSums:
    """`token_losses(logits_fn(hidden), ...)` computed `chunk` positions at a time (all rows of the batch
    together, so its sharding is kept), each chunk's logits recomputed in the backward pass: at most
    (b, chunk, vocab) float32 logits and their gradient exist at once, instead of (b, t, vocab) for the
    whole sequence. `chunk` 0 (or >= t) is one pass over the whole sequence."""
    targets, mask = shifted_targets(tokens, loss_mask)
    length = hidden.shape[1]
    if not chunk or chunk >= length:
        return sums_of(logits_fn(hidden), targets, mask, z_loss)
    if length % chunk:
        raise ValueError(f"a sequence of {length} positions does not split into chunks of {chunk}")

    def by_chunk(a):  # (b, t, ...) -> (t / chunk, b, chunk, ...)
        return jnp.swapaxes(a.reshape(a.shape[0], length // chunk, chunk, *a.shape[2:]), 0, 1)

    @jax.checkpoint
    def one(h, t, m):
        return sums_of(logits_fn(h), t, m, z_loss)

    def add(total, part):
        return jax.tree.map(jnp.add, total, one(*part)), None

    total, _ = jax.lax.scan(add, LossSums(*(jnp.float32(0),) * 3), (by_chunk(hidden), by_chunk(targets),
                                                                       by_chunk(mask)))
    return total
