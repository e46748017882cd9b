"""Images for the vision encoders: decoded (JPEG, PNG, WebP, ... with Pillow; EXIF orientation
applied), resized by the encoder's `Preprocess` (squash, pad or crop), normalised, and the boxes moved
with the image (and back, for predictions). `ImageSource` reads `DIR/IMGID.jpg` files in parallel
through tf.data; a missing, truncated or non-image file is a reported problem with its path, counted,
its image left blank (zeros, `ok` false), and with `strict` the first one stops the run.

Boxes are (xmin, ymin, xmax, ymax) in pixels of the image as displayed (orientation applied), edges
on pixel boundaries: a box of one pixel at (0, 0) is (0, 0, 1, 1).
"""

import dataclasses
import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oie_jax.errors import UserError
from oie_jax.models.encoders import Preprocess

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # tried in this order for an image id


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the original image lies in the prepared one: prepared = original * scale + offset, per axis;
    and the original's size (which boxes are cut to)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int = 0
    height: int = 0

    def as_array(self) -> np.ndarray:
        """(scale_x, scale_y, offset_x, offset_y)."""
        return np.array([self.scale_x, self.scale_y, self.offset_x, self.offset_y], np.float32)

    def per_coordinate(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) for the four coordinates (x1, y1, x2, y2) of a box."""
        return (np.array([self.scale_x, self.scale_y] * 2), np.array([self.offset_x, self.offset_y] * 2))


def to_prepared(boxes, placement: Placement) -> np.ndarray:
    """Boxes (..., 4) of the original image in the prepared image's pixels."""
    scale, offset = placement.per_coordinate()
    return np.asarray(boxes, np.float64) * scale + offset


def to_original(boxes, placement: Placement) -> np.ndarray:
    """Boxes (..., 4) of the prepared image (predictions) back in the original image's pixels."""
    scale, offset = placement.per_coordinate()
    return (np.asarray(boxes, np.float64) - offset) / scale


class ImageError(Exception):
    """An image file that cannot be used; the message says why."""


def decode(path) -> np.ndarray:
    """(height, width, 3) uint8 RGB of an image file, EXIF orientation applied, fully decoded (so that a
    truncated file fails here, not later)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("image not found")
    return _decoded(path)


def decode_bytes(data: bytes) -> np.ndarray:
    """As `decode`, of an image file's bytes (a data URL's)."""
    return _decoded(io.BytesIO(data))


def _decoded(source) -> np.ndarray:
    try:
        with Image.open(source) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's truncated and corrupt files
        raise ImageError(f"truncated or corrupt image ({str(exc)[:120]})") from None


def prepare(image: np.ndarray, preprocess: Preprocess) -> tuple[np.ndarray, Placement]:
    """An RGB uint8 image as the encoder's float32 input (height, width, 3) and where it was placed."""
    height, width = image.shape[:2]
    out_h, out_w = preprocess.size
    if preprocess.resize == "squash":
        new_h, new_w = out_h, out_w
    else:  # pad: the whole image fits; crop: the image covers the output
        scale = (min if preprocess.resize == "pad" else max)(out_h / height, out_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC), np.float32) / 255
    normalized = (resized - np.array(preprocess.mean, np.float32)) / np.array(preprocess.std, np.float32)
    # Cut the centre out of what is larger than the output (crop); pad what is smaller at the bottom and
    # right (pad), with zeros: the mean colour.
    top, left = max((new_h - out_h) // 2, 0), max((new_w - out_w) // 2, 0)
    out = np.zeros((out_h, out_w, 3), np.float32)
    src = normalized[top:top + out_h, left:left + out_w]
    out[:src.shape[0], :src.shape[1]] = src
    return out, Placement(new_w / width, new_h / height, -float(left), -float(top), width, height)


def image_path(directory: Path, image_id: str) -> Path:
    """DIR/IMGID.jpg, or the first of EXTENSIONS that exists (the .jpg path when none does)."""
    for extension in EXTENSIONS:
        path = directory / f"{image_id}{extension}"
        if path.is_file():
            return path
    return directory / f"{image_id}{EXTENSIONS[0]}"


@dataclasses.dataclass(frozen=True)
class ImageProblem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ImageSource:
    """Prepared images by id from one directory, read in parallel through tf.data."""

    def __init__(self, directory, preprocess: Preprocess, strict: bool = False):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError("no such image directory", self.directory)
        self.preprocess = preprocess
        self.strict = strict
        self.problems: list[ImageProblem] = []
        self.read = 0
        self._lock = threading.Lock()

    def load(self, image_id: str) -> tuple[np.ndarray, Placement, bool]:
        """(prepared image, placement, ok); a problem is recorded and a blank image returned."""
        path = image_path(self.directory, image_id)
        try:
            image, placement = prepare(decode(path), self.preprocess)
            ok = True
        except ImageError as exc:
            with self._lock:
                self.problems.append(ImageProblem(str(path), str(exc)))
            image, placement, ok = np.zeros((*self.preprocess.size, 3), np.float32), Placement(1, 1, 0, 0), False
        with self._lock:
            self.read += 1
        return image, placement, ok

    def dataset(self, image_ids: Sequence[str], batch_size: int, parallel: int | None = None):
        """A tf.data.Dataset of batches {"image", "placement" (scale_x, scale_y, offset_x, offset_y), "ok"}
        in the order of `image_ids`, decoded `parallel` at a time (default: tf.data's choice)."""
        import tensorflow as tf

        height, width = self.preprocess.size

        def load(image_id):
            image, placement, ok = self.load(image_id.decode("utf-8"))
            return image, placement.as_array(), np.bool_(ok)

        def load_tensor(image_id):
            outputs = (tf.float32, tf.float32, tf.bool)
            image, placement, ok = tf.numpy_function(load, [image_id], outputs, stateful=False)
            image.set_shape((height, width, 3))
            placement.set_shape((4,))
            ok.set_shape(())
            return {"image": image, "placement": placement, "ok": ok}

        ids = tf.data.Dataset.from_tensor_slices(tf.constant(list(image_ids), tf.string))
        return (ids.map(load_tensor, num_parallel_calls=parallel or tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size).prefetch(1))

    def batches(self, image_ids: Sequence[str], batch_size: int, parallel: int | None = None) -> Iterator[dict]:
        """The dataset's batches as numpy arrays; with `strict`, the first problem stops with a UserError."""
        for batch in self.dataset(image_ids, batch_size, parallel).as_numpy_iterator():
            self.check()
            yield batch

    def check(self) -> None:
        """With `strict`, a UserError naming the first problem so far."""
        if self.strict and self.problems:
            raise UserError(f"image problem (--strict): {self.problems[0]}")

    def summary(self) -> str:
        """One line for the end of a pass: images read, and how many could not be used (first few named)."""
        if not self.problems:
            return f"{self.read} images read"
        named = "; ".join(str(p) for p in self.problems[:3])
        more = f"; and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        return f"{self.read} images read, {len(self.problems)} could not be used (left blank): {named}{more}"
