"""MobileNetV2 with torchvision's pretrained ImageNet weights (the file that ships offline) against
torchvision's own model on real photos, and the safe reading of `.pth` files."""

import collections
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage
import torch
import torchvision
from PIL import Image

from oie_jax.assets import mobilenet_v2_weights
from oie_jax.convert import vision as convert_vision
from oie_jax.errors import UserError
from oie_jax.models.encoders import load_vision_model

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# Real photos shipped in packages, and the ImageNet classes a person would give them.
PHOTOS = {
    Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg": {"military uniform", "bow tie"},
    SKIMAGE_DATA / "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    SKIMAGE_DATA / "coffee.png": {"espresso", "cup"},
    SKIMAGE_DATA / "motorcycle_left.png": {"moped", "motor scooter"},
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Our model converted from the `.pth` (through a fresh safetensors cache), and torchvision's."""
    root = tmp_path_factory.mktemp("mobilenet")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    try:
        convert_vision.convert(mobilenet_v2_weights(), root / "ours")
    finally:
        os.environ.pop("XDG_CACHE_HOME") if previous is None else os.environ.update(XDG_CACHE_HOME=previous)
    assert (root / "cache" / "oie-jax" / "mobilenet_v2-b0353104.safetensors").is_file()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(mobilenet_v2_weights(), weights_only=True))
    return load_vision_model(root / "ours"), reference.eval()


def test_features_and_logits_equal_torchvision_on_real_photos(converted):
    (ours, preprocess), reference = converted
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    classes = weights.meta["categories"]
    assert preprocess.size == (224, 224) and preprocess.mean == (0.485, 0.456, 0.406)
    images = torch.stack([weights.transforms()(Image.open(path).convert("RGB")) for path in PHOTOS])
    with torch.no_grad():
        features, logits = reference.features(images).numpy(), reference(images).numpy()
    output = ours(images.numpy().transpose(0, 2, 3, 1))
    ours_logits = np.asarray(ours.logits(output.pooled))
    assert output.grid.shape == (len(PHOTOS), 7, 7, 1280) and output.pooled.shape == (len(PHOTOS), 1280)
    np.testing.assert_allclose(np.asarray(output.grid), features.transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours_logits, logits, atol=1e-4, rtol=1e-4)
    for (path, names), row, reference_row in zip(PHOTOS.items(), ours_logits, logits):
        assert classes[int(np.argmax(row))] == classes[int(np.argmax(reference_row))]
        assert classes[int(np.argmax(row))] in names, (path.name, classes[int(np.argmax(row))])


class Payload:
    """What an unrestricted unpickler would build (and could run code for)."""


def test_a_pth_with_objects_other_than_tensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.save(collections.OrderedDict(weight=torch.zeros(2), payload=Payload()), tmp_path / "evil.pth")
    with pytest.raises(UserError, match=r"evil.pth: not a weights-only PyTorch state dict \(UnpicklingError"):
        convert_vision.convert(tmp_path / "evil.pth", tmp_path / "out")
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"partial.pth: tensor 'features.0.1.weight' missing"):
        convert_vision.convert(tmp_path / "partial.pth", tmp_path / "out", overwrite=True)
