"""Masked next-token cross-entropy in float32, with an optional z-loss."""

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array, z_loss: float = 0.0):
    """(sum of masked per-token losses, number of masked tokens) for logits (b, t, vocab).

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
    losses = log_z - target_logits
    if z_loss:
        losses = losses + z_loss * log_z**2  # keeps the softmax normaliser near 1 (PaLM)
    return (losses * mask).sum(), mask.sum()
