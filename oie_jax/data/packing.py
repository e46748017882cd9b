"""Records to token sequences with a loss mask, and sequences packed into fixed-length rows.

A sequence is the prompt (BOS + tokens of `input`) followed by the target (tokens of `output` +
EOS); the loss mask covers exactly the target. Too long a sequence loses prompt tokens from the
start of the text (the instruction word sits at the end of the input, BOS stays); the target is
never cut: a record whose target alone does not fit is skipped and counted.
"""

import bisect
import collections
import dataclasses

import numpy as np

from oie_jax.data.format import Record, render
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Sequence:
    tokens: np.ndarray  # int32 (length,)
    loss_mask: np.ndarray  # int32 (length,): 1 on the target tokens


@dataclasses.dataclass
class EncodeStats:
    encoded: int = 0
    prompts_cut: int = 0  # sequences that lost prompt tokens to fit
    prompt_tokens_cut: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def answer_tokens(record: Record, tokenizer: Tokenizer) -> list[int]:
    """The record's output as training encodes it, after its prompt: the rendered output alone, then EOS."""
    if tokenizer.eos_id is None:
        raise UserError("the tokenizer names no EOS token (add eos_token to its tokenizer_config.json)")
    return tokenizer.encode(render(record)[1], add_special_tokens=False) + [tokenizer.eos_id]


def with_placeholders(prompt: list[int], bos_id: int | None, image_token_id: int, count: int) -> list[int]:
    """A prompt's token ids with `count` image placeholders first (after its BOS): the picture, then the
    text, as LLaVA's processors put "<image>" before the question."""
    keep = int(bool(prompt) and prompt[0] == bos_id)
    return prompt[:keep] + [image_token_id] * count + prompt[keep:]


def encode(record: Record, tokenizer: Tokenizer, max_length: int, stats: EncodeStats,
           placeholders: tuple[int, int] | None = None) -> Sequence | None:
    """BOS, the prompt and the target, the prompt cut from the left when the whole is longer than
    `max_length`; `placeholders` (image token id, count): a multimodal model's image placeholders after the
    BOS, as at generation (`with_placeholders`); a record whose own tokens hold that id is skipped and
    counted (the image would not fill its placeholders)."""
    answer = answer_tokens(record, tokenizer)
    prompt = tokenizer.encode(render(record)[0], add_special_tokens=True)
    if placeholders is not None and placeholders[0] in prompt + answer:
        stats.skipped["text holds the image placeholder id"] += 1
        return None
    keep = int(len(prompt) > 0 and prompt[0] == tokenizer.bos_id)
    head = prompt[:keep]  # BOS and the image survive any cut
    if placeholders is not None:
        head = with_placeholders(head, tokenizer.bos_id, *placeholders)
    room = max_length - len(answer) - len(head)
    if room < 1:
        stats.skipped["target longer than max_length"] += 1
        return None
    text = prompt[keep:]
    if len(text) > room:
        stats.prompts_cut += 1
        stats.prompt_tokens_cut += len(text) - room
        text = text[len(text) - room:]
    tokens = head + text + answer
    mask = [0] * (len(tokens) - len(answer)) + [1] * len(answer)
    stats.encoded += 1
    return Sequence(np.asarray(tokens, np.int32), np.asarray(mask, np.int32))


@dataclasses.dataclass(frozen=True)
class Rows:
    """A batch of rows: packed (several segments per row) or padded (one)."""

    tokens: np.ndarray  # int32 (rows, length), pad_id where empty
    loss_mask: np.ndarray  # int32 (rows, length)
    segment_ids: np.ndarray  # int32 (rows, length): 1, 2, ... per sequence, 0 for padding
    positions: np.ndarray  # int32 (rows, length): restart at 0 for each sequence

    @property
    def efficiency(self) -> float:
        """The non-padding fraction of the rows."""
        return float((self.segment_ids > 0).mean()) if self.segment_ids.size else 0.0


def pack(sequences: list[Sequence], length: int, pad_id: int) -> Rows:
    """Places sequences into rows of `length` tokens (`place`)."""
    rows = place([len(s.tokens) for s in sequences], length)
    return layout([[sequences[i] for i in row] for row in rows], length, pad_id)


def place(lengths: list[int], length: int, most: int | None = None) -> list[list[int]]:
    """The indices of the sequences of each row, a row holding at most `most`: best fit decreasing (longest
    first, each into the fullest row it fits), which leaves fewer rows than filling rows in the given order
    (the sample's 126 training sequences: 28 rows of 512 instead of 29, one more than their tokens would fill
    to the last slot). Rows come longest first, each lists its indices in ascending order; deterministic."""
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row) of the rows that can take more, sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = lengths[index]
        if size > length:
            raise ValueError(f"a sequence of {size} tokens does not fit rows of {length}")
        k = bisect.bisect_left(open_rows, (size, -1))
        if k < len(open_rows):
            room, row = open_rows.pop(k)
        else:
            room, row = length, len(rows)
            rows.append([])
        rows[row].append(index)
        if room > size and (most is None or len(rows[row]) < most):
            bisect.insort(open_rows, (room - size, row))
    return [sorted(row) for row in rows]


def pad(sequences: list[Sequence], length: int, pad_id: int) -> Rows:
    """One sequence per row."""
    return layout([[s] for s in sequences], length, pad_id)


def layout(rows: list[list[Sequence]], length: int, pad_id: int) -> Rows:
    """Rows of `length` tokens holding the given sequences one after another (segments 1, 2, ...)."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    loss_mask, segment_ids, positions = (np.zeros((len(rows), length), np.int32) for _ in range(3))
    for r, row in enumerate(rows):
        start = 0
        for segment, sequence in enumerate(row, 1):
            end = start + len(sequence.tokens)
            tokens[r, start:end] = sequence.tokens
            loss_mask[r, start:end] = sequence.loss_mask
            segment_ids[r, start:end] = segment
            positions[r, start:end] = np.arange(len(sequence.tokens))
            start = end
    return Rows(tokens, loss_mask, segment_ids, positions)
