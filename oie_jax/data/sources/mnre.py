"""MNRE (multimodal relation extraction on tweets; Zheng et al., 2021) as /Relation Extraction records.

The release (`mnre_txt/mnre_{train,val,test}.txt`, versions 1 and 2 alike) has one instance per line:
a Python dict literal (single-quoted strings, so not JSON) with `token` (the tweet's words), `h` and
`t` (the head and tail entity: `name` and `pos`, a [start, end) word range), `img_id` (the picture's
file name) and `relation` (one of 23 labels such as `/per/org/member_of`, or `None`). Each line
becomes one record: the words joined by spaces, one triple (head, relation, tail), `None` kept as a
relation (so that the pair is in the output and a model learns to say that it has none, as MNRE's
classifiers do), the image id in the record's grounding (no boxes). Lines are read with
`ast.literal_eval`, which evaluates literals only, never code.
"""

import ast
import functools
import json
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data.format import Grounding, Record
from oie_jax.data.sources import Checked, Problem, checked
from oie_jax.data.sources.jsonfile import lines, read_text

NO_RELATION = "None"


def read(path: Path) -> Iterator[Checked | Problem]:
    text = read_text(path)
    if isinstance(text, Problem):
        yield text
        return
    for number, line in enumerate(lines(text), 1):
        if line.strip():
            yield to_record(line, path, number)


def to_record(line: str, path: Path, number: int) -> Checked | Problem:
    reject = functools.partial(Problem, str(path), number)
    try:
        value = json.loads(line)
    except ValueError:
        try:
            value = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            return reject("record", "not a dict literal", str(exc)[:80])
    if not isinstance(value, dict):
        return reject("record", "not a dict literal")
    tokens = value.get("token")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        return reject("token", "missing field", "needs a non-empty list of words")
    entities = []
    for side in ("h", "t"):
        entity = value.get(side)
        if not isinstance(entity, dict) or not isinstance(entity.get("name"), str):
            return reject(side, "missing field", "needs name and pos")
        pos = entity.get("pos")
        if not (isinstance(pos, list) and len(pos) == 2 and all(isinstance(p, int) for p in pos)
                and 0 <= pos[0] < pos[1] <= len(tokens)):
            return reject(f"{side}.pos", "malformed span", repr(pos))
        words = " ".join(tokens[pos[0]:pos[1]])
        if words != entity["name"]:
            return reject(f"{side}.pos", "span mismatch", f"words {pos} are {words!r}, name is {entity['name']!r}")
        entities.append(entity["name"])
    relation, image = value.get("relation"), value.get("img_id")
    if not isinstance(relation, str) or not relation:
        return reject("relation", "missing field")
    if not isinstance(image, str) or not image:
        return reject("img_id", "missing field")
    item = (entities[0], relation, entities[1])
    record = Record(text=" ".join(tokens), task="Relation Extraction", items=(item,), id=f"{path.stem}:{number}",
                    language="en", subset="MNRE", grounding=Grounding(image, 0, 0, ((),)))
    return checked(record, path, number)
