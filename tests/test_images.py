"""Image input: boxes move with the image through every resize mode and back, EXIF orientation, the
parallel tf.data source, and files that cannot be used."""

import io

import numpy as np
import pytest
from PIL import Image

from oie_jax import cli
from oie_jax.data.images import ImageSource, decode, prepare, to_original, to_prepared
from oie_jax.errors import UserError
from oie_jax.models.encoders import Preprocess

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # prepared values stay in [0, 1]


def drawn(width: int, height: int, box) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def bright_box(image: np.ndarray) -> np.ndarray:
    """The box (pixel edges) around the pixels brighter than half."""
    ys, xs = np.nonzero(image[..., 0] > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@pytest.mark.parametrize("resize", ["squash", "pad", "crop"])
@pytest.mark.parametrize("width,height", [(300, 180), (150, 260)])
def test_boxes_move_with_the_image_and_back_to_the_pixel(resize, width, height):
    box = (60, 100, 110, 160)  # inside the centre that a crop keeps
    preprocess = Preprocess(size=(112, 128), resize=resize, **PLAIN)
    image, placement = prepare(drawn(width, height, box), preprocess)
    assert image.shape == (112, 128, 3)
    expected = to_prepared(box, placement)
    np.testing.assert_allclose(bright_box(image), expected, atol=1.0)  # the drawn rectangle is where the box went
    np.testing.assert_allclose(to_original(expected, placement), box, atol=1e-9)
    # A prediction read off the prepared image comes back onto the drawn rectangle, to within its resize.
    np.testing.assert_allclose(to_original(bright_box(image), placement), box,
                               atol=1.0 / min(placement.scale_x, placement.scale_y))
    if resize == "pad":  # aspect kept: one scale; the padding is the mean colour (zero)
        assert placement.scale_x == pytest.approx(placement.scale_y, rel=0.02)
        assert image[-1, -1].tolist() == [0, 0, 0]


def test_normalisation_uses_the_encoders_mean_and_std():
    preprocess = Preprocess(size=(8, 8), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), resize="squash")
    image, _ = prepare(np.full((8, 8, 3), 255, np.uint8), preprocess)
    np.testing.assert_allclose(image[0, 0], [1.0, 3.0, 0.5], atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    image = drawn(40, 20, (0, 0, 4, 4))  # a mark at the top left of a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    shown = decode(tmp_path / "turned.jpg")
    assert shown.shape == (40, 20, 3)  # tall as displayed
    assert shown[:4, -4:].mean() > 200 and shown[:4, :4].mean() < 50  # the mark is now at the top right


def test_the_source_reads_in_parallel_in_order_and_reports_every_unusable_file(tmp_path):
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, (30 + 7 * i, 50, 3), np.uint8) for i, name in enumerate("abc")}
    Image.fromarray(images["a"]).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(images["b"]).save(tmp_path / "b.png")
    Image.fromarray(images["c"]).save(tmp_path / "c.webp", lossless=True)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("not an image\n")
    preprocess = Preprocess(size=(32, 32), resize="pad", **PLAIN)

    source = ImageSource(tmp_path, preprocess)
    ids = ["a", "missing", "b", "cut", "c", "text"]
    batches = list(source.batches(ids, batch_size=4, parallel=3))
    ok = np.concatenate([b["ok"] for b in batches])
    assert ok.tolist() == [True, False, True, False, True, False]
    got = np.concatenate([b["image"] for b in batches])
    for position, name in [(0, "a"), (2, "b"), (4, "c")]:
        direct, placement = prepare(decode(tmp_path / f"{name}.{dict(a='jpg', b='png', c='webp')[name]}"), preprocess)
        np.testing.assert_array_equal(got[position], direct)
        np.testing.assert_allclose(np.concatenate([b["placement"] for b in batches])[position], placement.as_array())
    assert not got[1].any() and not got[3].any()  # unusable images are blank
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in source.problems}
    assert reasons.keys() == {"missing.jpg", "cut.jpg", "text.jpg"}
    assert reasons["missing.jpg"] == "image not found"
    assert reasons["cut.jpg"].startswith("truncated or corrupt image")
    assert reasons["text.jpg"] == "not an image Pillow can read"
    assert all(p.path.startswith(str(tmp_path)) for p in source.problems)
    summary = source.summary()
    assert summary.startswith("6 images read, 3 could not be used") and "missing.jpg: image not found" in summary

    strict = ImageSource(tmp_path, preprocess, strict=True)
    with pytest.raises(UserError, match=r"image problem \(--strict\): .*missing.jpg: image not found"):
        list(strict.batches(ids, batch_size=2))
    with pytest.raises(UserError, match="no such image directory"):
        ImageSource(tmp_path / "nowhere", preprocess)


def test_data_inspect_decodes_every_records_image_and_reports_the_unusable_ones(tmp_path, capsys):
    (tmp_path / "txt").mkdir()
    (tmp_path / "images").mkdir()
    tweets = [f"IMGID:{i}\nvisit\tO\nParis\tB-LOC\n" for i in (11, 12, 13)]
    (tmp_path / "txt" / "train.txt").write_text("\n".join(tweets))
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / "11.jpg")
    (tmp_path / "images" / "12.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    code = cli.main(["data", "inspect", str(tmp_path / "txt" / "train.txt"), "--from", "gmner",
                     "--images", str(tmp_path / "images")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 images read, 2 could not be used (left blank)" in out
    assert f"{tmp_path / 'images' / '12.jpg'}: " in out and f"{tmp_path / 'images' / '13.jpg'}: image not found" in out
    code = cli.main(["data", "inspect", str(tmp_path / "txt" / "train.txt"), "--from", "gmner",
                     "--images", str(tmp_path / "images"), "--strict"])
    assert code == 2 and "image problem (--strict): " in capsys.readouterr().err
