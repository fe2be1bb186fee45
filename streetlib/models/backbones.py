"""The backbones streetlib can build: their `keras.applications` constructors and the input normalisation their
ImageNet weights expect.

A registry of names only, importing nothing else of streetlib, so that both the weight sources (`weights`)
and the model builder (`network`) can look backbones up.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    """A registered backbone.

    Attributes:
        name: str, the registry name (lower case).
        constructor: str, the `keras.applications` function that builds it.
        normalization: str, the pipeline normalisation its ImageNet weights expect.
    """

    name: str
    constructor: str
    normalization: str


def _register(constructors, normalization):
    return {c.lower(): Backbone(c.lower(), c, normalization) for c in constructors}


# Backbones whose preprocessing the pipeline has. EfficientNet(V2), ConvNeXt and MobileNetV3 rescale inside the
# model ('raw' input in [0, 255]); ResNet50V2, MobileNet(V2), Xception and Inception need [-1, 1] inputs, which the
# pipeline does not offer yet.
BACKBONES = {
    **_register(["VGG16", "VGG19"], "caffe"),
    **_register(["ResNet50", "ResNet101", "ResNet152"], "caffe"),
    **_register(["DenseNet121", "DenseNet169", "DenseNet201"], "torch"),
    **_register([f"EfficientNetB{i}" for i in range(8)], "raw"),
    **_register([f"EfficientNetV2{v}" for v in ("B0", "B1", "B2", "B3", "S", "M", "L")], "raw"),
    **_register([f"ConvNeXt{v}" for v in ("Tiny", "Small", "Base", "Large", "XLarge")], "raw"),
    **_register(["MobileNetV3Small", "MobileNetV3Large"], "raw"),
}


def get_backbone(name):
    """Look up a backbone by name, case-insensitively ('vgg16', 'ResNet50', 'EfficientNetV2B0'). Returns `Backbone`."""
    key = name.lower() if isinstance(name, str) else name
    if key not in BACKBONES:
        raise ValueError(f"Invalid `backbone`. Expected one of {sorted(BACKBONES)}. Received: backbone={name!r}")
    return BACKBONES[key]
