"""Gold records and predicted outputs as fixed-shape integer arrays, the input of the jitted metrics.

Every comparison the metrics make is the equality of normalized strings (`format.normalize`): a text
label, or an item's fields. Each distinct normalized string gets an integer id from one dictionary
over the whole set, so equal ids mean equal strings and nothing else: there is no hash collision to
account for. The ids depend only on the examples and their order, so every process that encodes the
same examples builds the same arrays.
"""

import dataclasses
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from oie_jax.data import format as fmt
from oie_jax.data.format import Record

# Joins an item's normalized fields into one key. normalize() never leaves it in a field (str.split
# treats U+001F as whitespace), so distinct items never share a key.
FIELD_SEPARATOR = "\x1f"
NONE = -1  # no label; padding in the item arrays
ITEM_WIDTH_STEP = 8  # item arrays are this many columns wider at a time: fewer shapes to compile


class Encoded(NamedTuple):
    """One row per example. A NamedTuple, so a pytree that jit and device_put take whole."""

    group: np.ndarray  # int32 (N,): index into Groups.keys; Groups.padding_group on padding rows
    gold_label: np.ndarray  # int32 (N,): id of the gold text label, NONE when the gold has none
    pred_label: np.ndarray  # int32 (N,): id of the predicted text label, NONE when there is none
    well_formed: np.ndarray  # bool (N,): the output parses without a problem
    gold_items: np.ndarray  # int32 (N, Kg): item ids, NONE after the last one
    pred_items: np.ndarray  # int32 (N, Kp)


@dataclasses.dataclass(frozen=True)
class Groups:
    """The (subset, language) groups of a set in report order, and the language of each."""

    keys: tuple[tuple[str, str], ...]
    languages: tuple[str, ...]
    padded: int  # static group count of the compiled program (>= len(keys)); the extra groups stay empty
    padded_languages: int

    @classmethod
    def of(cls, records: Sequence[Record]) -> "Groups":
        keys = sorted({(r.subset, r.language) for r in records},
                      key=lambda key: (subset_order(key[0]), language_order(key[1])))
        languages = tuple(sorted({language for _, language in keys}, key=language_order))
        # One group more than needed for the padding rows; powers of two so that sets of a similar
        # make-up share one compiled program.
        return cls(tuple(keys), languages, power_of_two(len(keys) + 1, 8), power_of_two(len(languages), 4))

    @property
    def padding_group(self) -> int:
        return len(self.keys)

    def language_index(self) -> np.ndarray:
        """int32 (padded,): the language of each group; padding groups take language 0 (they are empty)."""
        index = np.zeros(self.padded, np.int32)
        index[: len(self.keys)] = [self.languages.index(language) for _, language in self.keys]
        return index


def subset_order(subset: str) -> tuple[int, str]:
    known = list(fmt.SUBSET_TASKS)
    return (known.index(subset), "") if subset in known else (len(known), subset)


def language_order(language: str) -> tuple[int, str]:
    return (fmt.LANGUAGES.index(language), "") if language in fmt.LANGUAGES else (len(fmt.LANGUAGES), language)


def power_of_two(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())


class Vocabulary:
    """Normalized strings to dense ids, with the normalization of each raw string remembered (labels
    and entities repeat a lot)."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.normalized: dict[str, str] = {}

    def norm(self, value: str) -> str:
        found = self.normalized.get(value)
        if found is None:
            found = self.normalized[value] = fmt.normalize(value)
        return found

    def id_of(self, normalized: str) -> int:
        return self.ids.setdefault(normalized, len(self.ids))

    def label(self, value: str) -> int:
        normalized = self.norm(value)
        return self.id_of(normalized) if normalized else NONE

    def items(self, items) -> list[int]:
        return [self.id_of(FIELD_SEPARATOR.join(map(self.norm, item))) for item in items]


def encode(golds: Sequence[Record], outputs: Sequence[str]) -> tuple[Encoded, Groups]:
    """Arrays for `golds[i]` scored against the model output `outputs[i]`."""
    if len(golds) != len(outputs):
        raise ValueError(f"{len(golds)} gold records but {len(outputs)} outputs")
    groups = Groups.of(golds)
    group_index = {key: i for i, key in enumerate(groups.keys)}
    vocabulary = Vocabulary()
    gold_labels, pred_labels, well_formed, gold_items, pred_items, group = [], [], [], [], [], []
    for gold, output in zip(golds, outputs):
        parsed = fmt.parse(output, gold.task)
        gold_labels.append(vocabulary.label(gold.label))
        pred_labels.append(vocabulary.label(parsed.label))
        well_formed.append(parsed.well_formed)
        gold_items.append(vocabulary.items(gold.items))
        pred_items.append(vocabulary.items(parsed.items))
        group.append(group_index[gold.subset, gold.language])
    encoded = Encoded(np.asarray(group, np.int32).reshape(-1), np.asarray(gold_labels, np.int32).reshape(-1),
                      np.asarray(pred_labels, np.int32).reshape(-1), np.asarray(well_formed, bool).reshape(-1),
                      ragged_to_padded(gold_items), ragged_to_padded(pred_items))
    return encoded, groups


def ragged_to_padded(rows: list[list[int]]) -> np.ndarray:
    """int32 (len(rows), width) with NONE after each row's values; width a multiple of ITEM_WIDTH_STEP."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    longest = int(lengths.max()) if len(rows) else 0
    width = max(ITEM_WIDTH_STEP, -(-longest // ITEM_WIDTH_STEP) * ITEM_WIDTH_STEP)
    out = np.full((len(rows), width), NONE, np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(lengths.sum()))
    row_of = np.repeat(np.arange(len(rows)), lengths)
    column_of = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row_of, column_of] = flat
    return out


def pad_rows(encoded: Encoded, rows: int, padding_group: int) -> Encoded:
    """The arrays grown to `rows` rows; the new rows belong to `padding_group`, which is never reported."""
    extra = rows - len(encoded.group)
    if extra < 0:
        raise ValueError(f"cannot pad {len(encoded.group)} rows down to {rows}")

    def grow(array, fill):
        return np.concatenate([array, np.full((extra, *array.shape[1:]), fill, array.dtype)])

    return Encoded(grow(encoded.group, padding_group), grow(encoded.gold_label, NONE), grow(encoded.pred_label, NONE),
                   grow(encoded.well_formed, False), grow(encoded.gold_items, NONE), grow(encoded.pred_items, NONE))
