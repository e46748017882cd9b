"""Twitter-2015/2017 multimodal NER files with their images. The fixture follows the release's layout as
UMT's README and data files describe it (Yu et al., ACL 2020, github.com/jefferyYu/UMT: `train.txt`,
`valid.txt`, `test.txt`; each tweet an `IMGID:<id>` line, then one `token<TAB>BIO tag` per line, a blank
line between tweets; the images apart, `<id>.jpg`), written here by hand: the real files are not on this
machine."""

import numpy as np
import pytest
from PIL import Image

from oie_jax import cli
from oie_jax.data.sources.registry import detect, load_source
from oie_jax.errors import UserError

TWEETS = """IMGID:1015799
RT\tO
@Kevin_Durant\tB-PER
:\tO
Oklahoma\tB-LOC
City\tI-LOC
Thunder\tB-ORG
win\tO

IMGID:16_05_01_22
Ann\tB-PER
at\tO
the\tO
NBA\tB-OTHER
Finals\tI-OTHER

Jordan\tB-PER
returns\tO

IMGID:16_05_03_7
Paris\tB-LOC
Saint\tX-ORG

IMGID:16_05_03_9
Chicago\tB-LOC
Bulls

IMGID:16_05_04_1
Go\tO
Spurs\tB-ORG
"""


@pytest.fixture
def release(tmp_path):
    data = tmp_path / "twitter2015"
    data.mkdir()
    (data / "valid.txt").write_text(TWEETS, encoding="utf-8")
    images = tmp_path / "twitter2015_images"
    images.mkdir()
    for name in ("1015799", "16_05_01_22"):  # 16_05_04_1 has no image: reported by --images
        Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(images / f"{name}.jpg")
    return data / "valid.txt", images


def test_tweets_carry_their_image_and_bad_ones_are_reported_by_line_and_field(release):
    path, _ = release
    assert detect(str(path)) == "mner"  # IMGID lines without the GMNER box folder beside them
    source, loaded = load_source([str(path)])
    assert source == "mner"
    assert [(r.text, r.items, r.grounding.image, r.subset) for r in loaded.records] == [
        ("RT @Kevin_Durant : Oklahoma City Thunder win",
         (("PER", "@Kevin_Durant"), ("LOC", "Oklahoma City"), ("ORG", "Thunder")), "1015799", "Twitter-MNER"),
        ("Ann at the NBA Finals", (("PER", "Ann"), ("OTHER", "NBA Finals")), "16_05_01_22", "Twitter-MNER"),
        ("Go Spurs", (("ORG", "Spurs"),), "16_05_04_1", "Twitter-MNER")]
    assert all(r.grounding.boxes == ((),) * len(r.items) for r in loaded.records)  # no boxes are known
    assert [(p.line, p.field, p.reason) for p in loaded.problems] == [
        (17, "IMGID", "missing image id"), (22, "tag", "unknown tag"), (26, "tag", "malformed line")]
    assert str(loaded.problems[1]) == f"{path}:22: tag: unknown tag ('X-ORG')"
    with pytest.raises(UserError, match=f"{path}:17: IMGID"):
        load_source([str(path)], strict=True)


def test_inspect_reads_every_tweets_image_and_names_the_missing_one(release, capsys):
    path, images = release
    assert cli.main(["data", "inspect", str(path), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "source: mner" in out
    assert "3 images read, 1 could not be used (left blank)" in out and "16_05_04_1.jpg: image not found" in out
    assert cli.main(["data", "inspect", str(path), "--images", str(images), "--strict"]) != 0
