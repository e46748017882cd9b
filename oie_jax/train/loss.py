"""Masked next-token cross-entropy in float32, with an optional z-loss kept apart for logging."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    """Sums over the masked tokens of a batch; divided by `tokens` they are means."""

    cross_entropy: jax.Array
    z_loss: jax.Array  # z_loss * log(Z)^2, the regulariser alone
    tokens: jax.Array


def token_losses(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array, z_loss: float = 0.0) -> LossSums:
    """Sums of masked per-token losses for logits (b, t, vocab).

    Position t predicts token t + 1; the mask of the predicted token decides whether it counts. The
    loss mask covers only target tokens, whose predecessor is always in the same packed segment.
    """
    # Shift the targets left rather than slicing the logits: the logits are the largest array of the
    # step, and a slice of them is a copy. The last position predicts nothing.
    logits = logits.astype(jnp.float32)
    targets = jnp.roll(tokens, -1, axis=1)
    mask = jnp.roll(loss_mask, -1, axis=1).at[:, -1].set(0).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    cross_entropy = ((log_z - target_logits) * mask).sum()
    regulariser = (z_loss * log_z**2 * mask).sum() if z_loss else jnp.float32(0)  # keeps log Z near 0 (PaLM)
    return LossSums(cross_entropy, regulariser, mask.sum())
