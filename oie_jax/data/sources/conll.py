"""CoNLL BIO files (`token<TAB>tag`, blank lines between sentences) as /NER records, and two Twitter
variants where each tweet opens with `IMGID:<id>`: multimodal NER (Twitter-2015 and Twitter-2017, Yu et
al., ACL 2020: `train.txt`, `valid.txt`, `test.txt`, the images apart as `<id>.jpg`), whose records carry
the image id in `grounding` (no boxes), and Twitter-GMNER, where `<xml dir>/<id>.xml` (Pascal VOC) holds
boxes whose `<name>` is an entity's surface string. Text is the tokens joined by spaces."""

import dataclasses
import functools
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data.format import Grounding, Record
from oie_jax.data.sources import Checked, Problem, checked
from oie_jax.data.sources.jsonfile import lines, read_text


def read(path: Path, language: str = "en") -> Iterator[Checked | Problem]:
    yield from _read(path, language, xml_dir=None)


def read_mner(path: Path) -> Iterator[Checked | Problem]:
    """Twitter-2015/2017 MNER tweets: every one must name its image."""
    yield from _read(path, "en", xml_dir=None, images=True)


def read_gmner(path: Path, xml_dir: Path | None = None) -> Iterator[Checked | Problem]:
    """GMNER tweets; boxes from `xml_dir` (default: `xml/` beside the folder of the text file)."""
    yield from _read(path, "en", xml_dir or path.parent.parent / "xml", images=True)


def _read(path: Path, language: str, xml_dir: Path | None, images: bool = False) -> Iterator[Checked | Problem]:
    text = read_text(path)
    if isinstance(text, Problem):
        yield text
        return
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines(text) + [""], 1):
        if line.strip():
            block.append((number, line))
        elif block:
            yield _sentence(path, block, language, xml_dir, images)
            block = []


def _sentence(path: Path, block: list[tuple[int, str]], language: str, xml_dir, images: bool) -> Checked | Problem:
    first_line = block[0][0]
    image = ""
    if block[0][1].startswith("IMGID:"):
        image = block[0][1][len("IMGID:"):].strip()
        block = block[1:]
    if images and not image:
        return Problem(str(path), first_line, "IMGID", "missing image id", "a tweet opens with an IMGID:<id> line")
    if not block:
        return Problem(str(path), first_line, "tokens", "empty text")
    tokens, tags = [], []
    for number, line in block:
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            return Problem(str(path), number, "tag", "malformed line", f"expected token<TAB>tag: {line[:40]!r}")
        token, tag = parts[0], parts[-1]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            return Problem(str(path), number, "tag", "unknown tag", repr(tag))
        tokens.append(token)
        tags.append(tag)
    items = tuple((label, " ".join(tokens[start:end])) for label, start, end in bio_spans(tags))
    record = Record(text=" ".join(tokens), task="NER", items=items, language=language,
                    id=image or f"{path.stem}:{first_line}", subset="GMNER" if xml_dir is not None else "")
    if xml_dir is None:
        if images:  # the image id where multimodal runs and `--images` look for it; no boxes are known
            grounding = Grounding(image, 0, 0, ((),) * len(items))
            record = dataclasses.replace(record, subset="Twitter-MNER", grounding=grounding)
        return checked(record, path, first_line)
    xml = Path(xml_dir) / f"{image}.xml"
    boxes = read_boxes(xml)
    if isinstance(boxes, Problem):
        return boxes
    named, width, height = boxes
    named, box_problems = check_boxes(named, width, height, {entity for _, entity in items}, xml)
    grounding = Grounding(image, width, height, tuple(tuple(named.get(entity, ())) for _, entity in items))
    result = checked(dataclasses.replace(record, grounding=grounding), path, first_line)
    return dataclasses.replace(result, problems=result.problems + box_problems) if box_problems else result


def check_boxes(named: dict[str, list], width: int, height: int, entities: set[str], xml: Path):
    """The boxes that can be used, each kept as far as it lies inside the image, and a warning for every
    box changed or left out: no area, partly or wholly outside the image, named by no entity of the tweet."""
    problems, kept = [], {}
    for name, boxes in named.items():
        for box in boxes:
            warn = functools.partial(Problem, str(xml), 1, "bndbox", rejects=False)
            x1, y1, x2, y2 = box
            if name not in entities:
                problems.append(warn("box named by no entity", f"{name!r} {box}"))
                continue
            inside = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)) if width and height else box
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                problems.append(warn("box without area in the image", f"{name!r} {box} in {width}x{height}"))
                continue
            if inside != box:
                problems.append(warn("box outside the image, cut to it", f"{name!r} {box} in {width}x{height}"))
            kept.setdefault(name, []).append(inside)
    return kept, tuple(problems)


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(label, start, end) token spans; an I- tag that does not continue its label starts a span."""
    spans: list[list] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        prefix, label = tag[:2], tag[2:]
        if prefix == "I-" and spans and spans[-1][0] == label and spans[-1][2] == i:
            spans[-1][2] = i + 1
        else:
            spans.append([label, i, i + 1])
    return [tuple(span) for span in spans]


def read_boxes(path: Path) -> tuple[dict[str, list], int, int] | Problem:
    """{entity surface: [boxes]}, width, height of a Pascal VOC file; empty when the file is absent
    (the image has no groundable entity)."""
    if not path.is_file():
        return {}, 0, 0
    try:
        root = ElementTree.parse(path).getroot()
        size = root.find("size")
        width, height = (int(size.findtext(k)) for k in ("width", "height")) if size is not None else (0, 0)
        named: dict[str, list] = {}
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            named.setdefault(obj.findtext("name", "").strip(), []).append(
                tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as exc:
        return Problem(str(path), 1, "xml", "malformed box file", str(exc)[:80])
    return named, width, height
