"""Candidate boxes that the user brings for the grounding head (proposals, H-Index style: a detector run
offline), next to or instead of the encoder's grid cells. One JSON object per file:

    {"IMGID": [[x1, y1, x2, y2], ...], ...}

boxes in the original image's pixels (the layout of `data/images.py`). A box without area is left out,
a box that reaches outside its image is cut to it, and proposals of ids without an image are unused:
each is reported with the file and the image id (`problems`), and `strict` makes the first one an error.
An image without an entry has no proposals (only its grid cells, when the head has them).
"""

import json
import math
from pathlib import Path

import numpy as np

from oie_jax.data.images import Placement, image_path, to_prepared
from oie_jax.errors import UserError, shown
from oie_jax.files import location

LAYOUT = '{"IMGID": [[x1, y1, x2, y2], ...], ...}'
def _is_box(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)


class Proposals:
    """Proposal boxes by image id, read from `path` (`read_proposals`)."""

    def __init__(self, path: str, boxes: dict[str, np.ndarray], strict: bool = False):
        self.path = path
        self.boxes = boxes  # image id -> (n, 4) float32, original pixels
        self.strict = strict
        self.problems: list[str] = []
        self._cut: set[str] = set()  # ids whose boxes were cut to the image (reported once)

    def report(self, problem: str) -> None:
        if self.strict:
            raise UserError(f"proposal problem (--strict): {problem}")
        self.problems.append(problem)

    @property
    def most(self) -> int:
        """The largest number of proposals of one image (at least 1, the width of the batch arrays)."""
        return max([1] + [len(b) for b in self.boxes.values()])

    def check_ids(self, directory) -> None:
        """Reports the file's ids that have no image in `directory` (a typo, or the file of another set)."""
        unknown = sorted(i for i in self.boxes if not image_path(Path(directory), i).is_file())
        if unknown:
            self.report(f"{self.path}: {len(unknown)} image ids have proposals but no image in {directory}: "
                        f"{shown(unknown)}")

    def original(self, image_id: str, width: int, height: int) -> np.ndarray:
        """(n, 4) proposals of an image in its pixels, cut to its `width` x `height` when known (a box cut
        away entirely is left out)."""
        boxes = self.boxes.get(image_id, np.zeros((0, 4), np.float32))
        if not (width and height and len(boxes)):
            return boxes
        inside = np.clip(boxes, 0, np.array([width, height] * 2, np.float32))
        if not np.array_equal(inside, boxes) and image_id not in self._cut:
            self._cut.add(image_id)
            self.report(f"{self.path}: {image_id}: proposals outside the {width}x{height} image, cut to it")
        return inside[(inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])]

    def prepared(self, image_id: str, placement: Placement, size: tuple[int, int]) -> np.ndarray:
        """(n, 4) proposals of an image in fractions of the prepared image (`size` = height, width)."""
        boxes = self.original(image_id, placement.width, placement.height)
        return in_fractions(boxes, placement, size)

    def summary(self) -> str:
        count = sum(len(b) for b in self.boxes.values())
        line = f"proposals {self.path}: {count:,} boxes of {len(self.boxes):,} images (at most {self.most} each)"
        if self.problems:
            line += f"; {len(self.problems)} problems: " + "; ".join(self.problems[:3])
        return line


def read_proposals(path, strict: bool = False) -> Proposals:
    """The proposals of a JSON file; a file that does not have the layout is a UserError naming the
    file and the id (and the line, for JSON that does not parse)."""
    file = location(path)
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("no such proposals file", file) from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not UTF-8 text (expected JSON: {LAYOUT})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}:{exc.lineno}: not JSON ({exc.msg}; expected {LAYOUT})") from None
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected one JSON object {LAYOUT}, got {type(value).__name__}")
    proposals = Proposals(str(file), {}, strict)
    degenerate = []
    for image_id, boxes in value.items():
        if not isinstance(boxes, list):
            raise UserError(f"{file}: {image_id}: expected a list of [x1, y1, x2, y2] boxes")
        kept = []
        for k, box in enumerate(boxes):
            if not _is_box(box):
                raise UserError(f"{file}: {image_id}[{k}]: expected [x1, y1, x2, y2] (numbers), "
                                f"got {json.dumps(box)[:60]}")
            if box[2] <= box[0] or box[3] <= box[1]:
                degenerate.append(f"{image_id}[{k}] {box}")
                continue
            kept.append(box)
        proposals.boxes[str(image_id)] = np.array(kept, np.float32).reshape(-1, 4)
    if degenerate:
        proposals.report(f"{file}: {len(degenerate)} boxes without area left out: {shown(degenerate)}")
    return proposals


def in_fractions(boxes: np.ndarray, placement: Placement, size: tuple[int, int]) -> np.ndarray:
    """Boxes (n, 4) of an original image in fractions of the prepared one (`size` = height, width), as the
    grounding head takes them."""
    height, width = size
    return (to_prepared(boxes, placement) / [width, height, width, height]).astype(np.float32).reshape(-1, 4)
