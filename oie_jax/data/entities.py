"""Entities of grounded NER: a text, its type and its region in the image (boxes, or none: "not in the
image"), as gold records hold them and as grounding predicts them. Below both generation (infer/ground.py)
and the metrics (eval/gmner.py), which read and write it."""

import dataclasses

from oie_jax.data.format import Record


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
