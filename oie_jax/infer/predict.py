"""Model outputs for records: prompts in the training layout, length-sorted batches through the
KV-cache `generate`, decoded text, and what it cost (compilations, tokens/s)."""

import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np

from oie_jax.data.format import Record, render_input
from oie_jax.data.grounding import image_id
from oie_jax.data.labels import LabelSet, label_set_for
from oie_jax.data.packing import with_placeholders
from oie_jax.data.tokenizer import Tokenizer, load_tokenizer
from oie_jax.infer import constrain
from oie_jax.infer import generate as gen
from oie_jax.models import multimodal_dir
from oie_jax.models.checkpoint import load_model
from oie_jax.models.policies import generation_overrides


@dataclasses.dataclass(frozen=True)
class GenerationStats:
    examples: int
    batch_size: int
    max_new_tokens: int
    batches: int
    generated_tokens: int
    seconds: float
    compiles: int  # generation programs compiled during the run
    buckets: int  # distinct (batch, prompt length) shapes met; compiles <= buckets means no recompilation
    steady_tokens: int  # tokens and time of the batches that compiled nothing
    steady_seconds: float
    budget_ended: int = 0  # outputs that the budget ended, not an end-of-sequence token

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    @property
    def steady_tokens_per_second(self) -> float:
        return self.steady_tokens / self.steady_seconds if self.steady_seconds else 0.0

    def summary(self) -> str:
        return (f"generated {self.generated_tokens:,} tokens for {self.examples:,} examples in {self.batches} batches "
                f"of up to {self.batch_size} (at most {self.max_new_tokens} new tokens each), "
                f"{self.seconds:.1f} s: {self.tokens_per_second:,.1f} tokens/s overall, "
                f"{self.steady_tokens_per_second:,.1f} tokens/s in batches that compiled nothing; "
                f"{self.compiles} compilations for {self.buckets} shape buckets"
                + (f"; {self.budget_ended:,} outputs ended by the budget, not the model" if self.budget_ended else ""))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "tokens_per_second": round(self.tokens_per_second, 2),
                "steady_tokens_per_second": round(self.steady_tokens_per_second, 2)}


def load_for_generation(directory, dtype: str | None = None):
    """(model, tokenizer, image preparation) of a model directory: a text one (preparation None), or a
    multimodal one (`models/multimodal_dir.py`, its tokenizer in llama/). `dtype`: the LLaMA's weights and
    computation (`policies.generation_overrides`)."""
    overrides = generation_overrides(dtype)
    if multimodal_dir.is_multimodal(directory):
        model, preprocess = multimodal_dir.load_multimodal_model(directory, **overrides)
        return model, load_tokenizer(multimodal_dir.text_dir(directory)), preprocess
    return load_model(directory, **overrides), load_tokenizer(directory), None


def record_images(records: Sequence[Record], images) -> np.ndarray:
    """Each record's image (its grounding's id, else its own) prepared by `images` (an ImageSource), in
    parallel; one that cannot be read is reported there and left blank (`strict`: an error)."""
    ids = [image_id(r) for r in records]
    return np.concatenate([batch["image"] for batch in images.batches(ids, 16)]) if ids else np.zeros((0,))


def prompt_tokens(records: Sequence[Record], tokenizer: Tokenizer, placeholders: tuple[int, int] | None = None
                  ) -> list[list[int]]:
    """BOS + the rendered input, as the training sequences begin (oie_jax.data.packing.encode); with
    `placeholders` (image token id, count), a multimodal model's image placeholders after the BOS."""
    prompts = tokenizer.encode_batch([render_input(r.text, r.task) for r in records], add_special_tokens=True)
    if placeholders is not None:
        prompts = [with_placeholders(p, tokenizer.bos_id, *placeholders) for p in prompts]
    return prompts


def record_automata(records: Sequence[Record], tokenizer: Tokenizer, labels: dict[str, LabelSet],
                    pieces: list[bytes]) -> list[constrain.Automaton]:
    """Each record's output automaton (its task, its labels, the entities of its text), allowing the space
    a SentencePiece tokenizer puts before the first word and drops when decoding (`pieces`: the
    vocabulary's token bytes)."""
    leading_space = tokenizer.strips_leading_space(pieces)
    return [constrain.automaton(r.text, r.task, label_set_for(labels, r.task, r.language), leading_space)
            for r in records]


def record_constraints(records: Sequence[Record], tokenizer: Tokenizer, labels: dict[str, LabelSet],
                       vocab_size: int) -> gen.Constraints:
    pieces, _ = gen.vocabulary(tokenizer, vocab_size)
    return gen.Constraints.of(record_automata(records, tokenizer, labels, pieces), tokenizer, vocab_size)


def generate_outputs(model, tokenizer: Tokenizer, records: Sequence[Record], batch_size: int = 16,
                     max_new_tokens: int = 128, progress: bool = True, labels: dict[str, LabelSet] | None = None,
                     images: np.ndarray | None = None) -> tuple[list[str], GenerationStats]:
    """Greedy output text for each record, in the records' order. Prompts are sorted by length and cut
    into batches, so a batch pads little and most batches fall into a shape bucket compiled before.
    With `labels` (label sets, possibly empty: any label), decoding is constrained to the format of each
    record's task, its labels and the entities of its text (infer/constrain.py). `images` (a multimodal
    model's, prepared, one per record) go into the prompts after the BOS."""
    text_model = gen.text_model(model)
    placeholders = None
    if images is not None:
        placeholders = (model.cfg.image_token_id, model.image_tokens(images.shape[1:]))
    prompts = prompt_tokens(records, tokenizer, placeholders)
    eos_ids = gen.stop_ids(text_model.cfg, tokenizer)
    constraints = None if labels is None else record_constraints(records, tokenizer, labels,
                                                                 text_model.cfg.vocab_size)
    if constraints is not None:
        warn_short_budget(constraints.automata, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    outputs = [""] * len(prompts)
    buckets, compiles, tokens, steady_tokens, steady_seconds, budget_ended = set(), 0, 0, 0, 0.0, 0
    bar = progress_bar(len(prompts), progress)
    start = time.perf_counter()
    for rows in batches:
        batch = [prompts[i] for i in rows]
        buckets.add((gen.bucket(len(batch)), gen.length_bucket(max(map(len, batch)))))
        traced, began = gen.trace_count(), time.perf_counter()
        rows_constraints = None if constraints is None else dataclasses.replace(
            constraints, automata=[constraints.automata[i] for i in rows])
        new_tokens = gen.generate(model, batch, max_new_tokens, eos_ids=eos_ids, batch_size=batch_size,
                                  constraints=rows_constraints, images=None if images is None else images[rows])
        elapsed, compiled = time.perf_counter() - began, gen.trace_count() - traced
        produced = sum(map(len, new_tokens))
        compiles, tokens = compiles + compiled, tokens + produced
        if not compiled:
            steady_tokens, steady_seconds = steady_tokens + produced, steady_seconds + elapsed
        for i, generated in zip(rows, new_tokens):
            outputs[i] = tokenizer.decode(generated, skip_special_tokens=True)
            budget_ended += not generated or generated[-1] not in eos_ids
        if bar is not None:
            bar.update(len(rows))
            bar.set_postfix(compiles=compiles, tokens_per_s=f"{tokens / (time.perf_counter() - start):.1f}")
    if bar is not None:
        bar.close()
    stats = GenerationStats(len(prompts), batch_size, max_new_tokens, len(batches), tokens, time.perf_counter() - start,
                            compiles, len(buckets), steady_tokens, steady_seconds, budget_ended)
    return outputs, stats


def warn_short_budget(automata: Sequence[constrain.Automaton], max_new_tokens: int) -> None:
    """Says when some records cannot hold even their shortest complete output in the budget (their
    outputs come back empty and count as malformed)."""
    needed = [int(auto.finish[auto.start]) for auto in automata]
    short = sum(n > max_new_tokens for n in needed)
    if short:
        print(f"warning: {short} of {len(needed)} records need more than max_new_tokens={max_new_tokens} tokens for "
              f"their shortest complete output (up to {max(needed)}): their outputs will be empty", file=sys.stderr)


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ex", desc="generating", dynamic_ncols=True)
