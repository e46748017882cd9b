"""Grounded extraction: the LLaMA extracts the entities of a text (greedy generation), the grounding head
puts each on a region of the image or says it is not there. Boxes come back in the original image's
pixels, cut to the image.

    from oie_jax.infer.ground import load_grounder
    grounder = load_grounder("runs/gmner_synth/model")
    (result,) = ground(grounder, [Record(text="Red Circle meets Blue Star", task="NER")], [image_array])
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oie_jax.data.entities import Entity
from oie_jax.data.format import Record
from oie_jax.data.grounding import item_tokens
from oie_jax.data.images import Placement, prepare, to_original
from oie_jax.data.proposals import in_fractions
from oie_jax.data.tokenizer import Tokenizer, load_tokenizer
from oie_jax.errors import UserError
from oie_jax.infer import generate as gen
from oie_jax.infer.predict import prompt_tokens
from oie_jax.models import encoders
from oie_jax.models.grounder import load_parts
from oie_jax.models.grounding import choose, entity_queries


@dataclasses.dataclass
class Grounder:
    """A grounding model ready for inference."""

    llama: nnx.Module
    vision: nnx.Module
    head: nnx.Module
    preprocess: encoders.Preprocess
    tokenizer: Tokenizer


def load_grounder(directory) -> Grounder:
    """The parts of a grounding model directory (`models/grounder.py`) and its tokenizer."""
    parts = load_parts(directory)
    return Grounder(parts.llama, parts.vision, parts.head, parts.preprocess, load_tokenizer(parts.tokenizer))


@dataclasses.dataclass(frozen=True)
class GroundedEntity:
    text: str
    type: str
    box: tuple[float, float, float, float] | None  # original pixels; None: not in the image
    probability: float | None = None  # of the head's choice; None: a region written by a multimodal model

    def to_json(self) -> dict:
        box = None if self.box is None else [round(v, 1) for v in self.box]
        probability = None if self.probability is None else round(self.probability, 4)
        return {"text": self.text, "type": self.type, "box": box, "probability": probability}

    def as_entity(self) -> Entity:
        return Entity(self.text, self.type, () if self.box is None else (self.box,))


@dataclasses.dataclass(frozen=True)
class GroundedResult:
    id: str
    output: str  # what the LLaMA wrote
    entities: tuple[GroundedEntity, ...]
    well_formed: bool
    reason: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "entities": [e.to_json() for e in self.entities], "output": self.output,
                "well_formed": self.well_formed, "reason": self.reason}


@nnx.jit
def _choose(llama, vision, head, tokens, segment_ids, spans, images, proposals, proposal_mask):
    hidden, _ = llama.hidden_states(tokens, segment_ids=segment_ids)
    out = head(entity_queries(hidden, spans), vision(images).grid, proposals, proposal_mask)
    return choose(out)


def ground(grounder: Grounder, records: Sequence[Record], images: Sequence[np.ndarray], *,
           placements: Sequence[Placement] | None = None, outputs: Sequence[list[int]] | None = None,
           proposals: Sequence[np.ndarray] | None = None, max_new_tokens: int = 64,
           batch_size: int = 8) -> list[GroundedResult]:
    """One result per record. `images` are original images (height, width, 3) uint8, prepared here; or,
    with their `placements`, images prepared already (`data.images.ImageSource`). `outputs`: the output
    tokens to ground (default: the LLaMA's greedy generation). `proposals`: per record, candidate boxes
    (n, 4) in the original image's pixels, next to the grid cells (required by a head without cells)."""
    if proposals is None and not grounder.head.cfg.cells:
        raise UserError("this grounding model has no grid-cell candidates (trained with grounding.cells=False): "
                        "give proposals")
    tokenizer = grounder.tokenizer
    prompts = prompt_tokens(records, tokenizer)
    eos_ids = gen.stop_ids(grounder.llama.cfg, tokenizer)
    generated = outputs
    if generated is None:
        generated = gen.generate(grounder.llama, prompts, max_new_tokens, eos_ids=eos_ids, batch_size=batch_size)
    if placements is None:
        prepared = [prepare(image, grounder.preprocess) for image in images]
        images, placements = [p[0] for p in prepared], [p[1] for p in prepared]
    regions = None
    if proposals is not None:
        regions = [in_fractions(np.asarray(b, np.float32), p, grounder.preprocess.size)
                   for b, p in zip(proposals, placements)]
    results = []
    for first in range(0, len(records), batch_size):
        rows = range(first, min(first + batch_size, len(records)))
        results += _ground_batch(grounder, [records[i] for i in rows], [prompts[i] for i in rows],
                                 [[t for t in generated[i] if t not in eos_ids] for i in rows],
                                 np.stack([images[i] for i in rows]), [placements[i] for i in rows],
                                 None if regions is None else [regions[i] for i in rows], batch_size)
    return results


def _ground_batch(grounder, records, prompts, outputs, images, placements, regions, batch_size):
    tokenizer = grounder.tokenizer
    found = [item_tokens(tokenizer, output, record.task) for record, output in zip(records, outputs)]
    length = gen.bucket(max(len(p) + len(o) for p, o in zip(prompts, outputs)), gen.MIN_LENGTH_BUCKET)
    entities = gen.bucket(max(1, max(len(parsed.items) for parsed, _ in found)))
    rows = batch_size  # a fixed row count: one compiled shape per length bucket
    tokens = np.zeros((rows, length), np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    spans = np.zeros((rows, entities, length), np.int8)
    pixels = np.zeros((rows, *images.shape[1:]), np.float32)
    pixels[: len(records)] = images
    for row, (prompt, output, (_, ranges)) in enumerate(zip(prompts, outputs, found)):
        sequence = prompt + output
        tokens[row, : len(sequence)] = sequence
        segment_ids[row, : len(sequence)] = 1
        for e, (start, end) in enumerate(ranges):
            spans[row, e, len(prompt) + start: len(prompt) + end] = 1
    proposals = proposal_mask = None
    if regions is not None:  # a bucketed count: one compiled shape for similar counts
        proposals = np.zeros((rows, gen.bucket(max(1, max(len(r) for r in regions))), 4), np.float32)
        proposal_mask = np.zeros(proposals.shape[:2], bool)
        for row, boxes in enumerate(regions):
            proposals[row, :len(boxes)], proposal_mask[row, :len(boxes)] = boxes, True
    choice = jax.device_get(_choose(grounder.llama, grounder.vision, grounder.head, jnp.asarray(tokens),
                                    jnp.asarray(segment_ids), jnp.asarray(spans), jnp.asarray(pixels),
                                    proposals, proposal_mask))
    height, width = grounder.preprocess.size
    results = []
    for row, (record, output, (parsed, _)) in enumerate(zip(records, outputs, found)):
        grounded = []
        for e, item in enumerate(parsed.items):
            label, text = item[0], item[-1]
            box = None
            if choice.in_image[row, e]:
                prepared = choice.box[row, e] * np.array([width, height, width, height])
                x1, y1, x2, y2 = to_original(prepared, placements[row])
                w, h = placements[row].width, placements[row].height
                box = (float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h)), float(np.clip(x2, 0, w)),
                       float(np.clip(y2, 0, h)))
            grounded.append(GroundedEntity(text, label, box, float(choice.probability[row, e])))
        results.append(GroundedResult(record.id, tokenizer.decode(output), tuple(grounded), parsed.well_formed,
                                      parsed.reason))
    return results


def draw(image: np.ndarray, entities: Sequence[GroundedEntity], path) -> None:
    """The image with a labelled rectangle per grounded entity, as PNG."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image).convert("RGB")
    pen = ImageDraw.Draw(picture)
    palette = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
    for k, entity in enumerate(e for e in entities if e.box is not None):
        colour = palette[k % len(palette)]
        x1, y1, x2, y2 = entity.box
        pen.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=3)
        label = f"{entity.text} ({entity.type}) {entity.probability:.2f}"
        left, top, right, bottom = pen.textbbox((x1, y1), label)
        top_edge = max(y1 - (bottom - top) - 4, 0)
        pen.rectangle((x1, top_edge, x1 + right - left + 4, top_edge + bottom - top + 4), fill=colour)
        pen.text((x1 + 2, top_edge + 2 - top + y1), label, fill=(255, 255, 255))
    picture.save(path, format="PNG")
