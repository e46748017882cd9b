"""Generation-based evaluation: the model writes an output for every record, the jitted metrics score
them. The training loop calls `evaluate` on the dev split and selects checkpoints by
`scores.metric(name)` (default `macro/all/f1`)."""

import dataclasses
import sys
from collections.abc import Callable, Sequence

from oie_jax.data.format import Record
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.eval.metrics import Scores, score
from oie_jax.infer.budget import OutputLengths
from oie_jax.infer.predict import generate_outputs


def evaluate(model, tokenizer: Tokenizer, records: Sequence[Record], batch_size: int = 16, max_new_tokens: int = 128,
             progress: bool = True, log: Callable[[str], None] | None = None,
             labels=None, images=None) -> tuple[list[str], Scores]:
    """(outputs, scores) of greedy generation on `records`, constrained to the format when `labels`
    (label sets) are given; `images` (a multimodal model's, prepared, one per record) go into the prompts.
    The scores carry the generation statistics (`scores.generation`: tokens/s, compilations); `log`
    receives their one-line summary (stderr by default), and a warning first when some gold outputs need
    more than `max_new_tokens`."""
    if not records:
        raise ValueError("evaluate needs at least one record")
    log = log or (lambda line: print(line, file=sys.stderr))
    cut = OutputLengths.of(records, tokenizer, "gold outputs").cut_by(max_new_tokens)
    if cut:
        log(f"warning: {cut}")
    outputs, stats = generate_outputs(model, tokenizer, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                      progress=progress, labels=labels, images=images)
    log(stats.summary())
    scores = score(records, outputs)
    return outputs, dataclasses.replace(scores, generation=stats)
