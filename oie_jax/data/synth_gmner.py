"""A synthetic grounded-NER corpus in the Twitter-GMNER layout, with exact ground truth:

    OUT/txt/{train,dev,test}.txt   CoNLL: `IMGID:<id>`, then one `token<TAB>BIO tag` per line
    OUT/xml/<id>.xml               Pascal VOC: the image size and a box per drawn object, named by the
                                   entity that refers to it (no file when no entity is in the image)
    OUT/images/<id>.jpg            the picture
    OUT/proposals.json             every drawn object's box per image, as a perfect detector would give
                                   them (`data/proposals.py`), for heads that take proposals

Each picture holds shapes of several kinds and colours at random places and sizes. An entity is named
by colour and kind ("Red Circle"), and its kind gives its type (circle PER, square ORG, triangle LOC,
star OTHER); a sentence names some drawn objects and some that are not in its picture (a bit more
than half of all entities are not, as in Twitter-GMNER). Two objects of the same
colour and kind share one entity, which then has two boxes.
"""

import json
import math
import random
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw

from oie_jax.errors import UserError

KINDS = {"Circle": "PER", "Square": "ORG", "Triangle": "LOC", "Star": "OTHER"}
COLOURS = {"Red": (220, 40, 40), "Green": (40, 170, 60), "Blue": (40, 80, 220), "Yellow": (235, 205, 40),
           "Purple": (140, 60, 170), "Orange": (240, 140, 30)}
BACKGROUNDS = ((245, 245, 240), (225, 230, 235), (235, 225, 215), (60, 60, 70))
TEMPLATES = (
    "Breaking : {0} was seen with {1} today",
    "{0} and {1} are trending again",
    "Nobody expected {0} to beat {1} , but here we are",
    "Photo of the day : {0}",
    "{0} says hello to {1} and {2}",
    "Why is {0} always next to {1} ?",
    "Can't believe {0} showed up without {1} lol",
    "Big news from {0} this morning",
)
SPLITS = (("train", 0.7), ("dev", 0.15), ("test", 0.15))
GROUNDABLE = 0.45  # chance that a sentence's slot names an object of its picture


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour) -> None:
    """Fills `kind` so that its extent is exactly `box` (x1, y1, x2, y2, edges on pixel boundaries)."""
    x1, y1, x2, y2 = box
    inside = (x1, y1, x2 - 1, y2 - 1)  # Pillow's coordinates include the last pixel
    if kind == "Circle":
        draw.ellipse(inside, fill=colour)
    elif kind == "Square":
        draw.rectangle(inside, fill=colour)
    elif kind == "Triangle":
        draw.polygon([(x1, y2 - 1), ((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1)], fill=colour)
    else:  # a five-pointed star, stretched so that its points touch all four sides of the box
        raw = [((1 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5),
                -(1 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
        xs, ys = [x for x, _ in raw], [y for _, y in raw]

        def stretch(value, low, high, start, end):
            return start + (value - low) / (high - low) * (end - start)

        draw.polygon([(stretch(x, min(xs), max(xs), x1, x2 - 1), stretch(y, min(ys), max(ys), y1, y2 - 1))
                      for x, y in raw], fill=colour)


def place(rng: random.Random, width: int, height: int, taken: list, size_range=(0.18, 0.4)):
    """A square box of random size that overlaps no taken box (None after a few tries)."""
    for _ in range(50):
        side = int(rng.uniform(*size_range) * min(width, height))
        x1, y1 = rng.randint(0, width - side), rng.randint(0, height - side)
        box = (x1, y1, x1 + side, y1 + side)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            return box
    return None


def tweet(rng: random.Random, image_id: str, out: Path) -> tuple[list[str], list]:
    """Draws one picture, writes its image and box file, and returns its CoNLL lines and its objects' boxes."""
    width, height = rng.randint(200, 360), rng.randint(180, 320)
    image = Image.new("RGB", (width, height), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    names = [f"{colour} {kind}" for colour in COLOURS for kind in KINDS]
    drawn: dict[str, list] = {}
    taken: list = []
    for name in rng.sample(names, rng.randint(1, 4)):
        for _ in range(2 if rng.random() < 0.1 else 1):  # now and then two objects of one name
            box = place(rng, width, height, taken)
            if box is not None:
                colour, kind = name.split()
                draw_shape(draw, kind, box, COLOURS[colour])
                drawn.setdefault(name, []).append(box)
                taken.append(box)
    image.save(out / "images" / f"{image_id}.jpg", quality=92)

    template = rng.choice(TEMPLATES)
    slots = template.count("{")
    in_image = rng.sample(list(drawn), len(drawn))
    absent = rng.sample([n for n in names if n not in drawn], slots)
    chosen = [in_image.pop() if in_image and rng.random() < GROUNDABLE else absent.pop() for _ in range(slots)]
    if any(n in drawn for n in chosen):
        write_boxes(out / "xml" / f"{image_id}.xml", image_id, width, height,
                    [(n, box) for n in dict.fromkeys(chosen) if n in drawn for box in drawn[n]])
    lines = [f"IMGID:{image_id}"]
    for token in template.split():
        if token.startswith("{"):  # a slot: the entity's words, B- then I- tags of its kind's type
            words = chosen[int(token[1:-1])].split()
            lines += [f"{word}\t{'I' if k else 'B'}-{KINDS[words[-1]]}" for k, word in enumerate(words)]
        else:
            lines.append(f"{token}\tO")
    return lines, taken


def write_boxes(path: Path, image_id: str, width: int, height: int, objects) -> None:
    parts = [f"<annotation><filename>{image_id}.jpg</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{escape(name)}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>\n")


def prepare_out(out, n: int, subdirectories) -> Path:
    """The new or empty output directory of a synthetic corpus of `n` examples, with its subdirectories."""
    out = Path(out)
    if n < 3:
        raise UserError(f"--n {n}: at least 3 examples are needed (one per split)")
    if out.exists() and any(out.iterdir()):
        raise UserError("output directory is not empty", out)
    for sub in subdirectories:
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def split_sizes(n: int) -> dict[str, int]:
    """{split: examples} of `n` examples split as SPLITS says, each split at least one."""
    sizes = {split: max(1, round(n * fraction)) for split, fraction in SPLITS[:-1]}
    sizes[SPLITS[-1][0]] = n - sum(sizes.values())
    return sizes


def synthesize(out, n: int, seed: int = 0) -> dict[str, int]:
    """Writes `n` tweets split 70/15/15 into train/dev/test; returns the tweets per split."""
    out = prepare_out(out, n, ("txt", "xml", "images"))
    rng = random.Random(seed)
    sizes, start, proposals = {}, 0, {}
    for split, count in split_sizes(n).items():
        blocks = []
        for j in range(count):
            image_id = str(100000 + start + j)
            lines, proposals[image_id] = tweet(rng, image_id, out)
            blocks.append(lines)
        (out / "txt" / f"{split}.txt").write_text("\n\n".join("\n".join(b) for b in blocks) + "\n")
        sizes[split], start = count, start + count
    (out / "proposals.json").write_text(json.dumps({k: [list(b) for b in v] for k, v in proposals.items()}) + "\n")
    return sizes
