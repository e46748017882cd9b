"""The kinds of training run, chosen from the config where it is read: the base class knows none of its
subclasses, and a new kind is one more row here.

    train(config, workdir)      the run of the config's kind, to the end (or a stop signal)
"""

from ml_collections import ConfigDict

from oie_jax.train.grounding.run import GroundingRun
from oie_jax.train.loop import Outcome, Run
from oie_jax.train.multimodal import MultimodalRun

KINDS = {"text": Run, "grounding": GroundingRun, "multimodal": MultimodalRun}


def kind_of(config: ConfigDict) -> str:
    return "grounding" if config.grounding.enabled else "multimodal" if config.multimodal.enabled else "text"


def train(config: ConfigDict, workdir, on_step=None) -> Outcome:
    """Trains as `config` says, in `workdir`. `on_step(step, metrics)` is called with each step's host
    metrics (for notebooks and tests)."""
    return KINDS[kind_of(config)](config, workdir, on_step).run()
