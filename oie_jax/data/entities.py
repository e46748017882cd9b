"""Entities of grounded NER: a text, its type and its region in the image (boxes, or none: "not in the
image"), as gold records hold them, as grounding predicts them and as a `Grounded NER` output writes
them. Below both generation (infer/ground.py) and the metrics (eval/gmner.py), which read and write it."""

import dataclasses

from oie_jax.data.format import GROUNDED_TASK, Record, render_region


@dataclasses.dataclass(frozen=True)
class Entity:
    text: str
    type: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # gold: every box; a prediction: at most one

    @property
    def in_image(self) -> bool:
        return bool(self.boxes)


def gold_entities(record: Record) -> list[Entity]:
    """The entities of a Twitter-GMNER record (items are (type, text); boxes aligned with the items)."""
    boxes = record.grounding.boxes if record.grounding is not None else ((),) * len(record.items)
    return [Entity(text, label, tuple(tuple(map(float, box)) for box in item_boxes))
            for (label, text), item_boxes in zip(record.items, boxes)]


def largest(boxes):
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)


def grounded_record(record: Record) -> Record:
    """A Twitter-GMNER record as a `Grounded NER` one for generation: each (type, text) item becomes (type,
    text, region), the region of the entity's largest box (`fmt.render_region`; `none` when it has none)."""
    g = record.grounding
    if g is None:
        raise ValueError(f"record {record.id!r} has no image (grounding) to write regions of")
    items = tuple((label, text, render_region(largest(boxes), g.width, g.height))
                  for (label, text), boxes in zip(record.items, g.boxes))
    return dataclasses.replace(record, task=GROUNDED_TASK, items=items)
