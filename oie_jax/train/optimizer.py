"""AdamW with warmup then cosine or linear decay, global-norm clipping and a weight-decay mask."""

import jax
import optax

from oie_jax.errors import UserError


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int, decay: str = "cosine",
                           end_fraction: float = 0.0):
    if decay not in ("cosine", "linear", "constant"):
        raise UserError(f"decay {decay!r} is not one of cosine, linear, constant")
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    rest = max(total_steps - warmup_steps, 1)
    after = {
        "cosine": optax.cosine_decay_schedule(peak, rest, alpha=end_fraction),
        "linear": optax.linear_schedule(peak, peak * end_fraction, rest),
        "constant": optax.constant_schedule(peak),
    }[decay]
    return optax.join_schedules([warmup, after], [warmup_steps])


def decays(params):
    """Weight decay for every weight but the norm scales (named `scale`, stacked or not)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def adamw(schedule, weight_decay: float = 0.0, clip_norm: float | None = 1.0, b1=0.9, b2=0.95, eps=1e-8):
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decays))
    return optax.chain(*chain)
