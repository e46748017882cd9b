"""Generation budgets from the data: the gold outputs' lengths in a model's tokens, the budget that cuts
at most 0.5% of them, and the file that carries a run's budget to its model directory
(MODEL_DIR/generation.json), from which `oie-jax eval` and `extract` take their default."""

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np
from etils import epath

from oie_jax.data.format import Record, render, unrenderable
from oie_jax.data.tokenizer import Tokenizer

GENERATION_FILE = "generation.json"  # in a run or model directory: the run's generation budget
CUT = 0.005  # the share of gold outputs a budget from the data may cut
DEFAULT_MAX_NEW_TOKENS = 128  # a model directory that carries no budget (an imported model)


@dataclasses.dataclass(frozen=True)
class OutputLengths:
    """The tokens of each gold output (without end-of-sequence), sorted; `what` names them in messages."""

    lengths: np.ndarray
    what: str

    @classmethod
    def of(cls, records: Sequence[Record], tokenizer: Tokenizer, what: str) -> "OutputLengths":
        outputs = tokenizer.encode_batch([render(r)[1] for r in records if not unrenderable(r)],
                                         add_special_tokens=False)
        return cls(np.sort(np.array([len(o) for o in outputs], np.int64)), what)

    def budget(self, cut: float = CUT) -> int:
        """The fewest new tokens, rounded up to a multiple of 8, that at most `cut` of the outputs need more of."""
        if not len(self.lengths):
            return DEFAULT_MAX_NEW_TOKENS
        kept = self.lengths[math.ceil(len(self.lengths) * (1 - cut)) - 1]
        return max(8, -(-int(kept) // 8) * 8)

    def longer_than(self, max_new_tokens: int) -> int:
        return len(self.lengths) - int(np.searchsorted(self.lengths, max_new_tokens, side="right"))

    def describe(self) -> str:
        if not len(self.lengths):
            return f"no {self.what}"
        p50, p90, p99 = (int(np.percentile(self.lengths, q, method="higher")) for q in (50, 90, 99))
        return (f"{len(self.lengths):,} {self.what}: p50 {p50}, p90 {p90}, p99 {p99}, max {int(self.lengths[-1])} "
                "tokens")

    def cut_by(self, max_new_tokens: int, tolerated: float = 0.0) -> str | None:
        """A warning when more than `tolerated` of the outputs need more than `max_new_tokens`, else None."""
        longer = self.longer_than(max_new_tokens)
        if longer <= tolerated * len(self.lengths):
            return None
        return (f"{longer:,} of {len(self.lengths):,} {self.what} ({longer / len(self.lengths):.1%}) need more than "
                f"max_new_tokens={max_new_tokens} tokens (max {int(self.lengths[-1])}): their outputs are cut; "
                f"{self.budget()} tokens would cut at most {CUT:.1%}")


def save_budget(directory, max_new_tokens: int, lengths: OutputLengths) -> None:
    (epath.Path(directory) / GENERATION_FILE).write_text(json.dumps(
        {"max_new_tokens": max_new_tokens, "gold_outputs": lengths.describe()}, indent=2) + "\n")


def copy_budget(source, target) -> None:
    path = epath.Path(source) / GENERATION_FILE
    if path.exists():
        (epath.Path(target) / GENERATION_FILE).write_text(path.read_text())


def model_budget(directory) -> int:
    """The generation budget of a model directory (its run's), else DEFAULT_MAX_NEW_TOKENS."""
    path = epath.Path(directory) / GENERATION_FILE
    if not path.exists():
        return DEFAULT_MAX_NEW_TOKENS
    return int(json.loads(path.read_text())["max_new_tokens"])
