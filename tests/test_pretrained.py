"""ImageNet weights by name, offline: the packaged EfficientNet-Lite0 weights load and are the real ones."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.net.backbone import Backbone, packaged_weights_file
from model.net.laanet import build_model

DOGS = Path(__file__).parent / "data" / "dlib_examples" / "dogs.jpg"
# ImageNet-1k classes 151..268 are dog breeds.
DOG_CLASSES = range(151, 269)


def _dogs_input(size: int = 224) -> torch.Tensor:
    img = cv2.cvtColor(cv2.imread(str(DOGS)), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(img).permute(2, 0, 1)[None]  # [-1, 1], as LAA-Net feeds its backbone


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_pretrained_lite0_calls_dogs_a_dog(name):
    """pretrained=True with the hub offline loads the packaged weights; with the package's own ImageNet
    classifier on top, the backbone ranks a dog breed first on dlib's dogs.jpg (random weights would not)."""
    path = packaged_weights_file(name)
    fc = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items() if k.startswith("_fc.")}
    backbone = Backbone(name, pretrained=True).eval()
    with torch.no_grad():
        x1, *_ = backbone(_dogs_input())
        logits = torch.nn.functional.linear(x1.mean((2, 3)), fc["_fc.weight"], fc["_fc.bias"])
    top = logits[0].softmax(0).topk(3)
    assert int(top.indices[0]) in DOG_CLASSES, top
    assert float(top.values[0]) > 0.2, top


def test_pretrained_by_name_through_the_model_config():
    """model.backbone=tf_efficientnet_lite0 model.pretrained=true builds LAA-Net on the packaged weights."""
    path = packaged_weights_file("tf_efficientnet_lite0")
    stem = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained=True, input_size=224))
    assert torch.equal(model.backbone.body.conv_stem.weight.detach(), stem)


def test_backbones_without_a_package_have_no_packaged_weights():
    assert packaged_weights_file("tf_efficientnet_b4") is None
    assert packaged_weights_file("efficientnet_lite0.ra_in1k") is None
