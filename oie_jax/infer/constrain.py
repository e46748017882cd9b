"""Format-constrained decoding: at each step only the tokens that keep the output a valid prefix of the
unified format for the record's task.

For each record an automaton over UTF-8 bytes accepts exactly the outputs the constraint allows:

    pairs    TEXT_LABEL "/" TASK "/" (":" LABEL ";" ENTITY)*
    triples  TEXT_LABEL "/" TASK "/" [(":" ENTITY ";" RELATION ";" ENTITY)+ ":"]
    events   TEXT_LABEL "/" TASK "/" [(":" TYPE ";" ENTITY (";" ENTITY)*)+ ":"]
    grounded TEXT_LABEL "/" TASK "/" (":" LABEL ";" ENTITY ";" REGION)*

where labels come from label sets (a trie each; any label without '/', ':' or ';' when a set is not
known) and ENTITY is any non-empty substring of the input text (a suffix automaton of its bytes) that
starts and ends on a character boundary and holds no ':' or ';' (the format's separators; an entity
with one cannot be generated under the constraint). The automaton is a dense table (states x 256
bytes) with state 0 dead; REGION is `none` or four integers 0..100 with a space between them
(`fmt.region_steps`); a token is allowed in a state when running its bytes through the table does
not reach the dead state, and end-of-sequence ids are allowed in accepting states. The table of every
record of a batch goes to the device once; each decoding step runs every vocabulary token's bytes
through it, one jitted gather per level of a trie of the vocabulary (TokenTrie).

The token budget is part of the constraint: each state knows how many tokens at most close the output
from there (`finishing`), and a token is allowed only where the tokens left after it still suffice, so
an output cut by `max_new_tokens` ends in an accepting state (it parses) whenever the budget could hold
a complete output at all.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oie_jax.data import format as fmt
from oie_jax.data.labels import LabelSet
from oie_jax.errors import UserError

DEAD = 0
UNREACHABLE = np.iinfo(np.int32).max // 2  # a state from which no output can be closed
SEPARATORS = b":;"
WHITESPACE = b" \t\n\r"


class _Table:
    """A growing deterministic automaton: one row of 256 next states per state; state 0 is dead."""

    def __init__(self):
        self.rows: list[list[int]] = [[DEAD] * 256]
        self.accept: list[bool] = [False]

    def new(self, accept: bool = False) -> int:
        self.rows.append([DEAD] * 256)
        self.accept.append(accept)
        return len(self.rows) - 1

    def edge(self, state: int, byte: int, target: int) -> None:
        if self.rows[state][byte] not in (DEAD, target):
            raise AssertionError(f"two ways out of state {state} on byte {byte}")  # the grammar is deterministic
        self.rows[state][byte] = target

    def chain(self, state: int, data: bytes) -> int:
        for byte in data:
            nxt = self.new()
            self.edge(state, byte, nxt)
            state = nxt
        return state

    def trie(self, root: int, words: Sequence[str]) -> list[int]:
        """Adds the words below `root`; returns the state where each one ends."""
        ends = []
        for word in words:
            state = root
            for byte in word.encode("utf-8"):
                nxt = self.rows[state][byte]
                if nxt == DEAD:
                    nxt = self.new()
                    self.edge(state, byte, nxt)
                state = nxt
            ends.append(state)
        return ends

    def label(self, root: int, labels: tuple[str, ...] | None, forbidden: bytes) -> list[int]:
        """States where a label ends: a trie of `labels`, or any non-empty run of bytes outside `forbidden`."""
        if labels is not None:
            return self.trie(root, [label for label in labels if not any(b in label.encode() for b in forbidden)])
        free = self.new()
        for byte in range(256):
            if byte not in forbidden:
                self.edge(root, byte, free)
                self.edge(free, byte, free)
        return [free]

    def substrings(self, text: bytes) -> tuple[int, list[int]]:
        """A suffix automaton of `text` limited to entity bytes: (its root, the states where an entity may
        end, i.e. on a character boundary)."""
        length, link, nexts, firstpos = [0], [-1], [{}], [-1]
        last = 0
        for position, byte in enumerate(text):
            current = len(length)
            length.append(length[last] + 1), link.append(0), nexts.append({}), firstpos.append(position)
            p = last
            while p != -1 and byte not in nexts[p]:
                nexts[p][byte] = current
                p = link[p]
            if p != -1:
                q = nexts[p][byte]
                if length[p] + 1 == length[q]:
                    link[current] = q
                else:
                    clone = len(length)
                    length.append(length[p] + 1), link.append(link[q]), nexts.append(dict(nexts[q]))
                    firstpos.append(firstpos[q])
                    while p != -1 and nexts[p].get(byte) == q:
                        nexts[p][byte] = clone
                        p = link[p]
                    link[q] = link[current] = clone
            last = current
        ids = [self.new() for _ in length]
        ends = []
        for s, transitions in enumerate(nexts):
            for byte, t in transitions.items():
                if byte in SEPARATORS or (s == 0 and (0x80 <= byte < 0xC0 or byte in WHITESPACE)):
                    continue  # no separators; an entity starts on a character that is not a space
                self.edge(ids[s], byte, ids[t])
            after = firstpos[s] + 1
            if s and (after == len(text) or not 0x80 <= text[after] < 0xC0):
                ends.append(ids[s])
        return ids[0], ends

    def hundredths(self, root: int) -> list[int]:
        """States where an integer 0..100 without leading zeros ends (the minimal automaton: `0`; `1`, then
        `0` and maybe one more `0`, or another digit; `2`..`9`, then maybe one digit)."""
        zero, one, other, ten, last = (self.new() for _ in range(5))
        self.edge(root, ord("0"), zero)
        self.edge(root, ord("1"), one)
        for digit in b"0123456789":
            if digit > ord("1"):
                self.edge(root, digit, other)
            self.edge(one, digit, ten if digit == ord("0") else last)
            self.edge(other, digit, last)
        self.edge(ten, ord("0"), last)
        return [zero, one, other, ten, last]

    def region(self, root: int) -> list[int]:
        """States where a grounded item's region (`none` or `x1 y1 x2 y2`) ends."""
        assert fmt.REGION_STEPS == 100, "hundredths() spells 0..100"
        ends = self.hundredths(root)
        for _ in range(3):
            space = self.new()
            for end in ends:
                self.edge(end, ord(" "), space)
            ends = self.hundredths(space)
        return ends + [self.chain(root, fmt.REGION_NONE.encode())]

    def copy_edges(self, source: int, target: int) -> None:
        for byte, nxt in enumerate(self.rows[source]):
            if nxt != DEAD:
                self.edge(target, byte, nxt)


@dataclasses.dataclass(frozen=True)
class Automaton:
    table: np.ndarray  # (states, 256) int32; state 0 dead
    accept: np.ndarray  # (states,) bool: an end-of-sequence token may come here
    start: int
    finish: np.ndarray | None = None  # (states,) int32: tokens that close the output from here (`finishing`)


def automaton(text: str, task: str, labels: LabelSet = LabelSet(), leading_space: bool = False) -> Automaton:
    """The automaton of the outputs allowed for an input `text` and `task` (module docstring). With
    `leading_space`, one space may come first: the tokenizer's decoding drops it
    (`Tokenizer.strips_leading_space`: a SentencePiece model writes its first word "▁Person")."""
    kind = fmt.TASKS.get(task)
    if kind is None:
        raise UserError(f"unknown task {task!r}")
    t = _Table()
    start = t.new()
    text_labels = None if labels.text is None else tuple(label for label in labels.text if "/" not in label)
    marker = f"/{task}/".encode()
    if text_labels is not None and "" in text_labels:
        label_ends = [start] + t.trie(start, [label for label in text_labels if label])
    else:
        label_ends = t.label(start, text_labels, b"/\n")
        if text_labels is None:
            label_ends.append(start)  # an empty text label too
    label_ends = label_ends or [start]  # a known set with no label at all: the empty one
    after_slash = t.chain(label_ends[0], marker[:1])
    for end in label_ends[1:]:
        t.edge(end, marker[0], after_slash)
    items = t.new(accept=True)  # after "/TASK/": the output may end here (no items)
    t.edge(t.chain(after_slash, marker[1:-1]), marker[-1], items)
    source = text.encode("utf-8")
    label_bytes = b":;/\n"
    if kind == "pairs":
        label_root = t.new()
        t.edge(items, ord(":"), label_root)
        entity_root, entity_ends = t.substrings(source)
        for end in t.label(label_root, labels.items, label_bytes):
            t.edge(end, ord(";"), entity_root)
        for end in entity_ends:
            t.accept[end] = True
            t.edge(end, ord(":"), label_root)
    elif kind == "triples":
        head_root, head_ends = t.substrings(source)
        tail_root, tail_ends = t.substrings(source)
        relation_root = t.new()
        t.edge(items, ord(":"), head_root)
        for end in head_ends:
            t.edge(end, ord(";"), relation_root)
        for end in t.label(relation_root, labels.items, label_bytes):
            t.edge(end, ord(";"), tail_root)
        after_item = t.new(accept=True)
        t.copy_edges(head_root, after_item)
        for end in tail_ends:
            t.edge(end, ord(":"), after_item)
    elif kind == "grounded":
        label_root, region_root = t.new(), t.new()
        t.edge(items, ord(":"), label_root)
        entity_root, entity_ends = t.substrings(source)
        for end in t.label(label_root, labels.items, label_bytes):
            t.edge(end, ord(";"), entity_root)
        for end in entity_ends:
            t.edge(end, ord(";"), region_root)
        for end in t.region(region_root):
            t.accept[end] = True
            t.edge(end, ord(":"), label_root)
    else:
        type_root = t.new()
        t.edge(items, ord(":"), type_root)
        argument_root, argument_ends = t.substrings(source)
        for end in t.label(type_root, labels.items, label_bytes):
            t.edge(end, ord(";"), argument_root)
        after_item = t.new(accept=True)
        t.copy_edges(type_root, after_item)
        for end in argument_ends:
            t.edge(end, ord(";"), argument_root)
            t.edge(end, ord(":"), after_item)
    if leading_space and t.rows[start][ord(" ")] == DEAD:  # (a label that may start with a space allows it already)
        first = t.new()
        t.copy_edges(start, first)
        t.edge(first, ord(" "), start)
        start = first
    return Automaton(np.asarray(t.rows, np.int32), np.asarray(t.accept, bool), start)


def accepts_prefix(auto: Automaton, data: bytes) -> bool:
    """Whether `data` is a prefix of an allowed output (the plain walk through the table)."""
    state = auto.start
    for byte in data:
        state = int(auto.table[state, byte])
        if state == DEAD:
            return False
    return True


def accepts(auto: Automaton, data: bytes) -> bool:
    state = auto.start
    for byte in data:
        state = int(auto.table[state, byte])
    return state != DEAD and bool(auto.accept[state])


def complete_prefix(auto: Automaton, tokens: Sequence[int], pieces: Sequence[bytes], eos_ids) -> list[int]:
    """`tokens` cut after the last token where the output is complete (an accepting state), so that an
    output stopped by the token budget mid-item still reads as a well-formed one; an output that ended
    with an end-of-sequence id is kept whole."""
    state, complete = auto.start, 0
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return list(tokens[:i + 1]) if auto.accept[state] else list(tokens[:complete])
        for byte in pieces[token]:
            state = int(auto.table[state, byte])
        if state == DEAD:
            break
        if auto.accept[state]:
            complete = i + 1
    return list(tokens[:complete])


def shortest_ways(auto: Automaton) -> tuple[np.ndarray, np.ndarray]:
    """(bytes from each state to the nearest accepting state, the first byte of one shortest way there).
    Following the first bytes from any state walks a shortest way whose every state continues it."""
    table = auto.table
    distance = np.where(auto.accept, 0, UNREACHABLE).astype(np.int64)
    distance[DEAD] = UNREACHABLE
    while True:  # shortest distances backwards, one byte further per round
        through = np.minimum(distance[table] + 1, UNREACHABLE)
        nearer = np.minimum(distance, through.min(axis=1))
        nearer[DEAD] = UNREACHABLE
        if np.array_equal(nearer, distance):
            return distance, np.argmin(through, axis=1)
        distance = nearer


def finishing(auto: Automaton, trie: "TokenTrie", longest: int = 32) -> Automaton:
    """`auto` with `finish`: for each state, a number of tokens that surely closes the output from there.
    It is the fewest tokens (of at most `longest` bytes) that spell the state's shortest way in bytes
    (`shortest_ways`); every state on that way has its rest, so a token allowed because the tokens left
    after it suffice always leaves a state from which a next token is allowed for the same reason."""
    distance, first_byte = shortest_ways(auto)
    states = np.arange(len(distance))
    after_byte = auto.table[states, first_byte]
    offsets = trie.levels_offsets()
    is_token = np.zeros(offsets[-1] + 1, bool)
    is_token[trie.nodes] = True
    is_token[-1] = False  # the dead node of the tokens without bytes
    steps = []  # (state after k bytes of each state's way, whether those k bytes are one token)
    state, node, on_way = states, np.zeros(len(states), np.int64), distance < UNREACHABLE
    for k in range(1, min(longest, len(trie.parents)) + 1):
        byte = first_byte[state]
        keys = trie.parents[k - 1].astype(np.int64) * 256 + trie.last_bytes[k - 1]
        wanted = node * 256 + byte
        position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        on_way &= (keys[position] == wanted) & (k <= distance)
        if not on_way.any():
            break
        node, state = np.where(on_way, position, 0), after_byte[state]
        steps.append((state, on_way & is_token[offsets[k] + node]))
    finish = np.where(auto.accept, 0, UNREACHABLE).astype(np.int64)
    finish[DEAD] = UNREACHABLE
    while True:
        fewer = finish.copy()
        for after, one_token in steps:
            fewer = np.minimum(fewer, np.where(one_token, finish[after] + 1, UNREACHABLE))
        if np.array_equal(fewer, finish):
            return dataclasses.replace(auto, finish=np.minimum(finish, UNREACHABLE).astype(np.int32))
        finish = fewer


@dataclasses.dataclass(frozen=True)
class TokenTrie:
    """The vocabulary's token bytes as a trie, level by level, so that a prefix shared by many tokens is
    run through an automaton once (SmolLM2: 99k trie nodes against 330k token bytes). Level k holds the
    distinct k-byte prefixes, each as the index of its (k-1)-byte prefix in level k-1 and its last byte.
    `nodes` gives each token's node in the concatenation [root, level 1, level 2, ..., dead node];
    tokens without bytes (special tokens) point at the dead node."""

    parents: tuple[np.ndarray, ...]
    last_bytes: tuple[np.ndarray, ...]
    nodes: np.ndarray

    @classmethod
    def of(cls, pieces: Sequence[bytes], vocab_size: int) -> "TokenTrie":
        pieces = [bytes(p) for p in pieces[:vocab_size]] + [b""] * max(0, vocab_size - len(pieces))
        depth = max(map(len, pieces), default=0)
        index: list[dict[bytes, int]] = [{b"": 0}]
        for k in range(1, depth + 1):  # sorted, so that each level's layout does not depend on token order
            index.append({prefix: i for i, prefix in enumerate(sorted({p[:k] for p in pieces if len(p) >= k}))})
        parents = tuple(np.array([index[k - 1][prefix[:-1]] for prefix in index[k]], np.int32)
                        for k in range(1, depth + 1))
        last_bytes = tuple(np.array([prefix[-1] for prefix in index[k]], np.int32) for k in range(1, depth + 1))
        offsets = np.cumsum([0] + [len(level) for level in index])
        nodes = np.array([offsets[len(p)] + index[len(p)][p] if p else offsets[-1] for p in pieces], np.int32)
        return cls(parents, last_bytes, nodes)

    def arrays(self) -> tuple:
        """The trie as a pytree of arrays, the form jitted code takes."""
        return self.parents, self.last_bytes, self.nodes

    def levels_offsets(self) -> np.ndarray:
        """Where each level starts in the concatenation `nodes` indexes (the last entry: the dead node)."""
        return np.cumsum([0, 1] + [len(level) for level in self.parents])


def stack(automata: Sequence[Automaton], rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tables, accept, start states, finish) of a batch of `rows` rows, tables padded to a power-of-two
    state count (fewer compiled shapes); rows past the automata get a dead table. An automaton without
    `finish` does not limit its tokens by the budget (0 everywhere)."""
    states = max(64, 1 << (max(a.table.shape[0] for a in automata) - 1).bit_length())
    tables = np.zeros((rows, states, 256), np.int32)
    accept = np.zeros((rows, states), bool)
    starts = np.zeros((rows,), np.int32)
    finish = np.zeros((rows, states), np.int32)
    for row, auto in enumerate(automata):
        tables[row, :auto.table.shape[0]] = auto.table
        accept[row, :auto.accept.shape[0]] = auto.accept
        starts[row] = auto.start
        if auto.finish is not None:
            finish[row, :auto.finish.shape[0]] = auto.finish
    return tables, accept, starts, finish


def token_ends(table: jax.Array, state: jax.Array, trie: tuple) -> jax.Array:
    """For one row: the state each vocabulary token's bytes lead to from `state` (DEAD where it fails),
    one gather per trie level (the dead state's row of the table is all DEAD, so failure sticks)."""
    parents, last_bytes, nodes = trie
    level = state[None]
    levels = [level]
    for parent, byte in zip(parents, last_bytes):
        level = table[level[parent], byte]
        levels.append(level)
    levels.append(jnp.full((1,), DEAD, jnp.int32))
    return jnp.concatenate(levels)[nodes]


def allowed(tables, accept, states, trie, eos_ids, finish=None, left=None) -> tuple[jax.Array, jax.Array]:
    """(mask of the allowed tokens (batch, vocab), the state each token leads to). With `finish` (batch,
    states) and `left` (tokens left in the budget, this one included: one for all rows, or one per row),
    only tokens after which the rest of the budget can close the output, unless none is (a budget too
    small for any complete output).
    End-of-sequence ids are allowed in accepting states, and also where nothing else is (a dead end
    never stalls a row)."""
    ends = jax.vmap(token_ends, in_axes=(0, 0, None))(tables, states, trie)
    mask = ends != DEAD
    complete = jnp.take_along_axis(accept, states[:, None], axis=1)[:, 0]
    if finish is not None:  # (where the output is complete, stopping is in time)
        in_time = mask & (jnp.take_along_axis(finish, ends, axis=1) < jnp.reshape(left, (-1, 1)))
        mask = jnp.where((jnp.any(in_time, axis=1) | complete)[:, None], in_time, mask)
    eos = jnp.asarray(eos_ids, jnp.int32)
    stop = complete | ~jnp.any(mask, axis=1)
    mask = mask.at[:, eos].set(stop[:, None])
    return mask, ends
