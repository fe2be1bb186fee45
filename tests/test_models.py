import inspect

import keras
import numpy as np
import pytest
from conftest import assert_same_computation

from streetlib.attribution.explainer import logits_tensor
from streetlib.classes import OUTPUTS, STREET10, SYNTH10
from streetlib.models import backbones, weights
from streetlib.models import network as models

VGG16_LAYERS = [
    "block1_conv1",
    "block1_conv2",
    "block1_pool",
    "block2_conv1",
    "block2_conv2",
    "block2_pool",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_pool",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block4_pool",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
    "block5_pool",
]
HEAD = ["fc1", "fc1_bn", "fc2", "fc2_bn", "city_logits", "region_logits"]


@pytest.fixture(scope="module")
def model():
    return models.build_model(input_shape=(32, 32, 3), classes=STREET10, seed=0)


def test_layout_follows_the_convention(model):
    assert model.input.name.startswith("image") and model.layers[0].name == "image"
    backbone = model.get_layer("backbone")
    assert isinstance(backbone, keras.Model)
    assert [layer.name for layer in backbone.layers[1:]] == VGG16_LAYERS
    names = [layer.name for layer in model.layers]
    head = ["pool", "fc1", "fc1_bn", "fc1_relu", "fc1_dropout", "fc2", "fc2_bn", "fc2_relu", "fc2_dropout"]
    assert names[:11] == ["image", "backbone", *head]
    assert [layer.name for layer in models.head_layers(model)] == head
    assert {"region_logits", "city_logits", "region", "city"} <= set(names)
    assert model.get_layer("fc1").units == 512 and model.get_layer("fc2").units == 128
    assert model.get_layer("fc1_dropout").rate == 0.5

    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    probs = model(x)
    assert sorted(probs) == ["city", "region"]
    assert probs["region"].shape == (3, 2) and probs["city"].shape == (3, 10)
    np.testing.assert_allclose(np.sum(probs["city"], axis=1), 1.0, rtol=1e-5)

    logits = keras.Model(model.input, {o: logits_tensor(model, o) for o in OUTPUTS})(x)
    assert sorted(logits) == ["city", "region"]
    np.testing.assert_allclose(keras.ops.softmax(logits["city"]), probs["city"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits["city"], probs["city"])


def test_a_conv_head_on_a_cut_backbone(tmp_path):
    model = models.build_model(
        input_shape=(32, 32, 3), cut="block1_pool", head="conv", pooling="avgmax", filters=8, seed=0
    )
    backbone = model.get_layer("backbone")
    assert [layer.name for layer in backbone.layers[1:]] == ["block1_conv1", "block1_conv2", "block1_pool"]
    head = ["head_conv1", "head_conv1_bn", "head_conv1_relu", "head_conv2", "head_conv2_bn", "head_conv2_relu"]
    assert [layer.name for layer in models.head_layers(model)] == [*head, "pool", "head_dropout"]
    # block1_pool halves 32 px to 16; the head's strided first convolution halves it again.
    assert tuple(model.get_layer("head_conv2").output.shape) == (None, 8, 8, 8)
    assert tuple(model.get_layer("pool").output.shape) == (None, 16)

    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    maps = np.asarray(keras.Model(model.input, model.get_layer("head_conv2_relu").output)(x))
    pooled = np.asarray(model.get_layer("pool")(maps))
    np.testing.assert_allclose(pooled[:, :8], maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled[:, 8:], maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)

    # The custom pooling layer is registered, so the file loads in safe mode and computes the same.
    path = tmp_path / "conv.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert_same_computation(loaded(x)["city"], model(x)["city"])

    # Cut at the backbone, the head replays on the cached block1_pool map and gives the whole model's outputs.
    frozen, rest = models.split_model(model, through="backbone")
    assert_same_computation(rest(frozen(x))["city"], model(x)["city"])


def test_head_sizes_follow_the_class_spec():
    small = models.build_model(input_shape=(32, 32, 3), classes=SYNTH10, pooling="max", units=64, dropout=0.25)
    assert small.get_layer("pool").__class__.__name__ == "GlobalMaxPooling2D"
    assert small.get_layer("fc1").units == 64 and small.get_layer("fc2_dropout").rate == 0.25
    assert small.output["city"].shape[-1] == SYNTH10.num_classes

    flat = models.build_model(input_shape=(64, 64, 3), pooling="flatten")
    assert flat.get_layer("fc1").units == 4096  # the original's Flatten-4096 variant
    assert flat.get_layer("fc1").kernel.shape == (2 * 2 * 512, 4096)


def test_freezing_counts_match_the_original(model):
    # The original's counts: 15,047,116 parameters, 331,148 trainable in transfer, 7,410,572 with block5 fine-tuned.
    assert models.count_params(model)["total"] == 15_047_116

    models.freeze(model, through="backbone")
    assert models.count_params(model)["trainable"] == 331_148
    assert models.trainable_layers(model) == HEAD

    models.freeze(model, through="block4_pool")
    assert models.count_params(model)["trainable"] == 7_410_572
    assert models.trainable_layers(model) == ["block5_conv1", "block5_conv2", "block5_conv3", *HEAD]

    models.freeze(model, through="block3_pool")
    assert models.trainable_layers(model) == [f"block{b}_conv{c}" for b in (4, 5) for c in (1, 2, 3)] + HEAD

    models.freeze(model, through=None)
    assert len(models.trainable_layers(model)) == 13 + len(HEAD)
    assert models.count_params(model)["non_trainable"] == 2 * (512 + 128)  # BatchNorm moving statistics

    with pytest.raises(ValueError, match=r"Invalid `through`.*Received: through='block6_pool'"):
        models.freeze(model, through="block6_pool")


def test_saved_model_loads_in_safe_mode(model, tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(x)["city"], model(x)["city"], rtol=1e-6)
    assert [layer.name for layer in loaded.get_layer("backbone").layers[1:]] == VGG16_LAYERS


@pytest.mark.parametrize("through", ["backbone", "block4_pool"])
def test_split_model_shares_layers_and_computes_the_same(model, through):
    frozen, rest = models.split_model(model, through=through)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(rest(frozen(x))["city"], model(x)["city"], rtol=1e-5, atol=1e-7)
    assert rest.get_layer("fc1") is model.get_layer("fc1")
    expected_shape = (1, 1, 512) if through == "backbone" else (2, 2, 512)
    assert tuple(rest.input.shape[1:]) == expected_shape
    with pytest.raises(ValueError, match=r"Invalid `through`. Expected 'backbone' or a layer .*'block5_pool'\]"):
        models.split_model(model, through="no_such_layer")


def test_modern_backbones_build_and_refuse_cuts_across_skips():
    resnet = models.build_model(backbone="ResNet50", input_shape=(32, 32, 3))
    assert resnet.get_layer("backbone").get_layer("conv1_conv") is not None
    inner = [layer.name for layer in resnet.get_layer("backbone").layers]
    with pytest.raises(ValueError, match="are not a single chain"):
        models.split_model(resnet, through=inner[-5])
    frozen, _ = models.split_model(resnet, through="backbone")
    assert frozen.name == "backbone"


def test_imagenet_download_failure_of_another_backbone_names_the_path(monkeypatch):
    from keras.src.utils import file_utils

    url = "http://127.0.0.1:9/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

    def unreachable(*args, **kwargs):
        raise Exception(f"URL fetch failure on {url}: None -- [Errno 111] Connection refused")

    monkeypatch.setattr(file_utils, "get_file", unreachable)
    expected = weights.cache_dir() / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(weights.WeightsDownloadError, match=f"put it at exactly {expected} "):
        models.build_backbone("resnet50", weights="imagenet", input_shape=(32, 32, 3))

    def broken(*args, **kwargs):
        raise Exception("disk full")

    monkeypatch.setattr(file_utils, "get_file", broken)
    with pytest.raises(Exception, match="disk full"):
        models.build_backbone("resnet50", weights="imagenet", input_shape=(32, 32, 3))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match=r"Invalid `backbone`. Expected one of .*'vgg16'.* Received: backbone='vgg61'"):
        models.build_model(backbone="vgg61")
    with pytest.raises(ValueError, match=r"Invalid `pooling`. Expected one of \('avg', 'max', 'flatten', 'avgmax'\)"):
        models.build_model(pooling="mean", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"Invalid `dropout`.*Received: dropout=1.0"):
        models.build_model(dropout=1.0, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"Invalid `units`.*Received: units=0"):
        models.build_model(units=0, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"Invalid `head`. Expected one of \('dense', 'conv'\). Received: head='mlp'"):
        models.build_model(head="mlp", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"Invalid `filters`.*Received: filters=0"):
        models.build_model(head="conv", filters=0, input_shape=(32, 32, 3))
    with pytest.raises(
        ValueError, match=r"Invalid `cut`. Expected a layer of the backbone .*Received: cut='block9_pool'"
    ):
        models.build_model(cut="block9_pool", input_shape=(32, 32, 3))
    assert backbones.get_backbone("EfficientNetV2B0").normalization == "raw"


def _documented_args(doc):
    """Argument names of a Google-style ``Args:`` section ("a, b: ..." documents both)."""
    names, inside = [], False
    # Dedented first: Python 3.13 strips a docstring's common indentation when it compiles it, 3.11 keeps it.
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            inside = True
            continue
        if inside and (stripped.endswith(":") and " " not in stripped or not stripped and names):
            break
        head = stripped.split(":", 1)[0]
        if inside and ":" in stripped and line.startswith(" " * 4) and not line.startswith(" " * 8):
            names += [n.strip().lstrip("*") for n in head.split(",")]
    return names


@pytest.mark.parametrize(
    "module_name", ["models.weights", "models.network", "training.train", "evaluation.evaluate", "figures"]
)
def test_docstrings_name_every_argument(module_name):
    import importlib
    import inspect

    module = importlib.import_module(f"streetlib.{module_name}")
    checked = 0
    for name, func in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or func.__module__ != module.__name__ or "Args:" not in (func.__doc__ or ""):
            continue
        params = [p for p in inspect.signature(func).parameters if p not in ("self",)]
        assert _documented_args(func.__doc__) == params, f"{module_name}.{name}"
        checked += 1
    assert checked >= 2


PLAIN_KERAS_SCRIPT = """
import sys
import numpy as np, keras
model = keras.models.load_model({path!r}, safe_mode=True)
probs = model(np.load({x!r}))
assert not any(name.split(".")[0] == "streetlib" for name in sys.modules), "streetlib was imported"
np.save({out!r}, np.asarray(probs["city"]))
"""


@pytest.mark.parametrize("head", ["conv", "dense"])
def test_a_saved_model_loads_with_plain_keras_without_streetlib(tmp_path, head):
    from conftest import run_script

    model = models.build_model(input_shape=(32, 32, 3), cut="block1_pool", head=head, pooling="avgmax", seed=0)
    path, x, out = tmp_path / "model.keras", tmp_path / "x.npy", tmp_path / "city.npy"
    model.save(path)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.save(x, images)
    proc = run_script(PLAIN_KERAS_SCRIPT.format(path=str(path), x=str(x), out=str(out)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The same graph and weights on the same CPU in another process: the same kernels, so float32 roundoff only.
    np.testing.assert_allclose(np.load(out), np.asarray(model(images)["city"]), rtol=1e-5, atol=1e-6)
