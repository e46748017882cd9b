"""A corpus where the picture decides: each text names one thing whose type its words cannot tell, and
its picture shows what the thing is.

    OUT/{train,dev,test}.jsonl   unified NER records (`data/sources/records.py`), each with its picture in
                                 `grounding` (image id, size, the named object's box)
    OUT/images/<id>.jpg          one shape of a random colour, size and place

A name that is a person, a place, an organisation or something else alike ("Jordan", "Phoenix",
"Chelsea") sits in a sentence that fits any of them; the shape's kind gives the type, as in
`synth_gmner` (circle PER, square ORG, triangle LOC, star OTHER). Name, sentence and kind are drawn
independently, so a model that reads only the text can do no better than guess among the four types,
and one that sees the picture can get every one right.
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from oie_jax.data.format import Grounding, Record
from oie_jax.data.synth_gmner import BACKGROUNDS, COLOURS, KINDS, draw_shape, prepare_out, split_sizes

NAMES = ("Jordan", "Phoenix", "Chelsea", "Georgia", "Madison", "Austin", "Florence", "Victoria", "Sydney",
         "Dallas", "Savannah", "Orlando")
TEMPLATES = (
    "Photo of the day : {0}",
    "{0} is trending again",
    "Everyone is talking about {0} today",
    "Look at {0} in this picture",
    "Big news about {0} this morning",
    "Nobody expected {0} to show up",
)
SIZE = 128  # pixels a side; the shape covers 40-90% of it


def picture(rng: random.Random, image_id: str, out: Path) -> tuple[str, tuple[int, int, int, int]]:
    """Draws one shape into OUT/images/<id>.jpg; returns its kind and box."""
    kind, colour = rng.choice(list(KINDS)), rng.choice(list(COLOURS))
    side = rng.randint(int(0.4 * SIZE), int(0.9 * SIZE))
    x1, y1 = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
    box = (x1, y1, x1 + side, y1 + side)
    image = Image.new("RGB", (SIZE, SIZE), rng.choice(BACKGROUNDS))
    draw_shape(ImageDraw.Draw(image), kind, box, COLOURS[colour])
    image.save(out / "images" / f"{image_id}.jpg", quality=92)
    return kind, box


def synthesize(out, n: int, seed: int = 0) -> dict[str, int]:
    """Writes `n` records split 70/15/15 into train/dev/test; returns the records per split."""
    out = prepare_out(out, n, ("images",))
    rng = random.Random(seed)
    sizes, start = {}, 0
    for split, count in split_sizes(n).items():
        lines = []
        for j in range(count):
            image_id = str(200000 + start + j)
            name, template = rng.choice(NAMES), rng.choice(TEMPLATES)
            kind, box = picture(rng, image_id, out)
            record = Record(text=template.format(name), task="NER", items=((KINDS[kind], name),), id=image_id,
                            language="en", subset="picture-decides",
                            grounding=Grounding(image_id, SIZE, SIZE, ((box,),)))
            lines.append(json.dumps(record.to_json()))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        sizes[split], start = count, start + count
    return sizes
