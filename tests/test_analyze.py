"""Tests of streetlib.cli.analyze: the analyzer on real street photos, every bad-input case (files, URLs served by a
local HTTP server on 127.0.0.1, models), and that one bad input never stops the others."""

import argparse
import errno
import http.server
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from test_attribution import convention_model  # noqa: E402

from streetlib import inference
from streetlib.classes import STREET10, SYNTH10  # noqa: E402
from streetlib.cli import analyze
from streetlib.cli import commands as cli  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "street-samples"
SAMPLE_FILES = [SAMPLES / f"{name}.jpg" for name in ("tokyo", "vancouver", "demo-street")]
needs_samples = pytest.mark.skipif(not all(p.is_file() for p in SAMPLE_FILES), reason="shared/street-samples missing")


def save_model(model, path, *, classes=STREET10, normalization="samplewise", image_size=None):
    model.save(path)
    meta = {"normalization": normalization, "classes": classes.to_dict()}
    if image_size is not None:
        meta["image_size"] = image_size
    inference.sidecar_path(path).write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_model(models_dir):
    return save_model(convention_model(32), models_dir / "tiny.keras")


@pytest.fixture(scope="module")
def vgg_model(models_dir):
    return save_model(convention_model(64, backbone="vgg16"), models_dir / "vgg16-standin.keras")


def jpeg_bytes(size=(48, 36), colour=(200, 120, 40)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "street.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(path)
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    big = jpeg_bytes((300, 300))
    redirects = {
        "/to-street": "/street.jpg",
        "/loop": "/loop",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    }

    def _send(self, status, kind, body, *, length=True):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/street.jpg":
            self._send(200, "image/jpeg", jpeg_bytes())
        elif self.path == "/page.html":
            self._send(200, "text/html; charset=utf-8", b"<html>not an image</html>")
        elif self.path == "/big.jpg":
            self._send(200, "image/jpeg", self.big)
        elif self.path == "/stream.jpg":
            self._send(200, "image/jpeg", self.big, length=False)  # HTTP/1.0: the body ends when the socket closes
        elif self.path == "/garbage.jpg":
            self._send(200, "image/jpeg", b"this is not a JPEG")
        elif self.path == "/slow.jpg":
            time.sleep(2.0)
            self._send(200, "image/jpeg", jpeg_bytes())
        elif self.path == "/drip.jpg":
            self._drip(jpeg_bytes())
        elif self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, "text/plain", b"missing")

    def _drip(self, body, *, interval=0.1, most=60):
        """Send the headers, then one byte every ``interval`` s: no single read waits long, but the body is slow.
        Bounded: after ``most`` bytes the handler stops by itself, leaving the body incomplete."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body[:most]:
            self.wfile.write(bytes([byte]))
            time.sleep(interval)

    def log_message(self, *args):
        pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the timeout and size-cap cases): expected


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run(argv, capsys):
    args = analyze.add_arguments(argparse.ArgumentParser()).parse_args([str(a) for a in argv])
    status = analyze.main(args)
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(argv, capsys):
    """``streetlib analyze ARGV`` through the command's entry point: (status, stdout, stderr)."""
    status = cli.main(["analyze", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------------------------------
# Real street photographs


@needs_samples
def test_street_samples_are_analysed(vgg_model, tmp_path, capsys):
    status, out, err = run([*SAMPLE_FILES, "--model", vgg_model, "--out", tmp_path], capsys)
    assert status == 0, err
    print(out)  # kept in the test log: the analyzer's output on the three samples
    for path, size in zip(SAMPLE_FILES, ("700x525", "2272x1704", "750x463"), strict=True):
        assert f"{path} ({size})" in out
        assert (tmp_path / f"{path.stem}_gradcam.png").stat().st_size > 10_000
    assert out.count("  region: western ") == 3 and out.count("  top 3 cities: 1. ") == 3


@needs_samples
def test_only_cam_json_rank_and_top(vgg_model, tmp_path, capsys):
    status, out, _ = run(
        [SAMPLE_FILES[2], "--model", vgg_model, "--out", tmp_path, "--only-cam", "--rank", "3", "--top", "5", "--json"],
        capsys,
    )
    assert status == 0
    (record,) = json.loads(out)
    assert record["ok"] and record["size"] == [750, 463]
    assert sum(record["region"].values()) == pytest.approx(1.0, abs=1e-3)
    probs = [c["probability"] for c in record["cities"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert record["explained"]["city"] == {**record["cities"][2], "rank": 3}
    assert record["explained"]["region"]["rank"] == 2  # capped: two regions
    assert Path(record["figure"]) == tmp_path / "demo-street_cam.png" and Path(record["figure"]).is_file()


def test_no_save_writes_nothing_and_names_do_not_collide(tiny_model, good_image, tmp_path, capsys):
    argv = [good_image, good_image, "--model", tiny_model, "--out", tmp_path / "figs", "--no-save"]
    status, out, _ = run(argv, capsys)
    assert status == 0 and "figure:" not in out and not (tmp_path / "figs").exists()
    status, out, _ = run([good_image, good_image, "--model", tiny_model, "--out", tmp_path, "--only-cam"], capsys)
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["street-2_cam.png", "street_cam.png"]


def test_python_dash_m_entry_point(tiny_model, good_image, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streetlib.cli.analyze",
            str(good_image),
            str(tmp_path / "nope.jpg"),
            "--model",
            str(tiny_model),
            "--no-save",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert f"{good_image} (70x40)" in proc.stdout
    assert f"error: Image not found: {tmp_path / 'nope.jpg'}" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one clear line each, and the other images are still analysed


def bad_file(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.jpg"
    if kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("not an image")
        return path
    if kind == "directory":
        path = tmp_path / "x.jpg"
        path.mkdir()
        return path
    if kind == "long-name":
        return tmp_path / ("x" * 300 + ".jpg")
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "Image not found"),
        ("text", "Cannot read image"),
        ("directory", "is a directory, not an image file"),
        ("long-name", "File name too long. Check the path"),
    ],
)
def test_bad_files_are_reported_and_the_rest_analysed(kind, expected, tiny_model, good_image, tmp_path, capsys):
    status, out, err = run_cli([bad_file(tmp_path, kind), good_image, "--model", tiny_model, "--no-save"], capsys)
    assert status == 1
    assert err.count("\n") == 1 and "streetlib analyze: error: " in err and expected in err
    assert f"{good_image} (70x40)" in out


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:9/x.jpg", "unreachable"),
        ("{server}/page.html", "served 'text/html', not an image"),
        ("{server}/big.jpg", "bytes is over the 2000-byte limit"),
        ("{server}/stream.jpg", "the body is over the 2000-byte limit"),
        ("{server}/garbage.jpg", "the download is not a readable image"),
        ("{server}/missing.jpg", "HTTP 404"),
        ("{server}/slow.jpg", "no answer within 0.5 s"),
        ("{server}/drip.jpg", "not downloaded within the 0.5 s timeout"),
    ],
)
def test_bad_urls_are_reported_and_the_rest_analysed(url, expected, server, tiny_model, good_image, capsys):
    url = url.format(server=server)
    argv = [
        url,
        good_image,
        f"{server}/street.jpg",
        "--model",
        tiny_model,
        "--no-save",
        "--timeout",
        "0.5",
        "--max-bytes",
        "2000",
        "--json",
        "--allow-private",
    ]
    status, out, err = run_cli(argv, capsys)
    assert status == 1
    assert err.count("\n") == 1 and url in err and expected in err
    bad, local, remote = json.loads(out)
    assert not bad["ok"] and expected in bad["error"]
    assert local["ok"] and local["size"] == [70, 40]
    assert remote["ok"] and remote["size"] == [48, 36]


@pytest.mark.parametrize(
    "url, reason, advice",
    [
        ("http://127.0.0.1:abc/x.jpg", "Port could not be cast to integer value as 'abc'", "Check the host and port."),
        ("http://127.0.0.1:99999/x.jpg", "Port out of range 0-65535", "Check the host and port."),
        ("http://[::1/x.jpg", "Invalid IPv6 URL", "Check the host and port."),
        ("http:///x.jpg", "no host name", "Expected http(s)://HOST[:PORT]/PATH."),
        ("{server}/a street.jpg", "URL can't contain control characters.", "Percent-encode spaces and non-ASCII"),
        ("{server}/straße.jpg", "'ascii' codec can't encode character", "Percent-encode spaces and non-ASCII"),
    ],
)
def test_malformed_urls_are_reported_and_the_rest_analysed(url, reason, advice, server, tiny_model, good_image, capsys):
    url = url.format(server=server)
    with pytest.raises(inference.InputError) as err:
        inference.read_input(url)
    message = str(err.value)
    assert message.startswith(f"{url}: invalid URL ({reason}") and advice in message and "\n" not in message

    argv = [good_image, url, f"{server}/street.jpg", "--model", tiny_model, "--no-save", "--allow-private"]
    status, out, err = run_cli(argv, capsys)
    assert status == 1
    assert err == f"streetlib analyze: error: {message}\n"
    assert f"{good_image} (70x40)" in out and f"{server}/street.jpg (48x36)" in out


def test_download_time_is_bounded_as_a_whole(server):
    url = f"{server}/drip.jpg"  # a byte every 0.1 s: each read gets data in time, the whole would take 6 s
    start = time.monotonic()
    with pytest.raises(inference.InputError) as err:
        inference.fetch_url(url, timeout=0.5, allow_private=True)
    elapsed = time.monotonic() - start
    # Half the 6 s the whole download takes: a bound per read would run to the end; 3 s leaves a busy CPU 2.5 s of
    # slack over the timeout.
    assert elapsed < 3.0, f"the download went on for {elapsed:.1f} s with a 0.5 s timeout"
    message = str(err.value)
    assert message.startswith(f"{url}: not downloaded within the 0.5 s timeout (") and "bytes received" in message
    assert "raise --timeout" in message
    assert (
        inference.fetch_url(f"{server}/street.jpg", timeout=0.5, allow_private=True) == jpeg_bytes()
    )  # a prompt server still serves


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_unreadable_image_message_fits_the_command(kind, tiny_model, good_image, tmp_path, capsys):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image" if kind == "text" else jpeg_bytes((64, 64))[:300])
    with pytest.raises(inference.InputError) as err:
        inference.read_input(path)
    message = str(err.value)
    assert message.startswith(f"Cannot read image {path}: ")
    assert "Replace it with a readable JPEG, PNG, WebP or BMP file, or leave it out." in message
    assert "on_error" not in message
    status, out, err = run_cli([path, good_image, "--model", tiny_model, "--no-save"], capsys)
    assert status == 1 and err == f"streetlib analyze: error: {message}\n"
    assert f"{good_image} (70x40)" in out


# ---------------------------------------------------------------------------------------------------------------
# Unusable models and options stop the command with status 2


def flat_model(outputs):
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inp))
    return keras.Model(inp, {name: keras.layers.Dense(n, name=name)(x) for name, n in outputs.items()})


def test_model_without_expected_outputs(models_dir, good_image, capsys):
    path = save_model(flat_model({"scores": 10}), models_dir / "scores.keras")
    status, _, err = run([good_image, "--model", path], capsys)
    assert status == 2
    assert "lacks the expected 'region' output" in err and err.count("\n") == 1


def test_class_spec_must_match_the_model(models_dir, good_image, capsys):
    path = save_model(flat_model({"region_logits": 2, "city_logits": 5}), models_dir / "five.keras")
    status, _, err = run([good_image, "--model", path], capsys)
    assert status == 2 and "has 5 city classes but class spec 'street10' has 10" in err


def test_unsafe_model_is_refused_by_safe_mode(models_dir, good_image, capsys):
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    path = models_dir / "lambda.keras"
    keras.Model(inp, x).save(path)
    status, _, err = run([good_image, "--model", path], capsys)
    assert status == 2 and "Cannot load model" in err and "safe" in err.lower()


@pytest.mark.parametrize(
    "setup, extra, expected",
    [
        ("missing", [], "Model file not found"),
        ("not-a-model", [], "Cannot load model"),
        ("bad-sidecar", [], "is not valid JSON"),
        ("list-sidecar", [], "must hold a JSON object"),
        ("ok", ["--normalization", "imagenet"], "Invalid `normalization`"),
        ("ok", ["--classes", "cities.txt"], "Invalid `classes`"),
        ("ok", ["--rank", "11"], "--rank and --top must be at most 10"),
        ("ok", ["--layer", "block9_conv1"], "no layer named 'block9_conv1'"),
    ],
)
def test_unusable_model_or_option(setup, extra, expected, tiny_model, good_image, tmp_path, capsys):
    path = tiny_model
    if setup == "missing":
        path = tmp_path / "none.keras"
    elif setup == "not-a-model":
        path = tmp_path / "fake.keras"
        path.write_text("not a zip")
    elif setup in ("bad-sidecar", "list-sidecar"):
        path = tmp_path / "model.keras"
        path.write_bytes(Path(tiny_model).read_bytes())
        inference.sidecar_path(path).write_text("{broken" if setup == "bad-sidecar" else "[1, 2]")
    status, _, err = run([good_image, "--model", path, "--no-save", *extra], capsys)
    assert status == 2
    assert expected in err and err.count("\n") == 1


def test_a_text_file_named_keras_is_not_reported_missing(good_image, tmp_path, capsys):
    path = tmp_path / "notes.keras"
    path.write_text("weights: see the shared drive")
    with pytest.raises(inference.ModelError) as err:
        inference.load_model(path)
    message = str(err.value)
    assert "not found" not in message.lower()
    assert f"Cannot load model {path}: the file exists but is not a Keras model archive" in message
    assert "save the model again" in message
    status, out, err = run_cli([good_image, "--model", path, "--no-save"], capsys)
    assert status == 2 and out == "" and err == f"streetlib analyze: error: {message}\n"


def test_sidecar_sets_classes_and_options_override_it(models_dir, good_image, capsys):
    path = save_model(convention_model(32, seed=1), models_dir / "synth.keras", classes=SYNTH10, normalization="unit")
    loaded = inference.load_model(path)
    assert loaded.spec == SYNTH10 and loaded.normalization == "unit" and loaded.image_size == (32, 32)
    status, out, _ = run([good_image, "--model", path, "--no-save", "--json"], capsys)
    (record,) = json.loads(out)
    assert status == 0 and set(record["region"]) == {"synth-west", "synth-east"}
    status, out, _ = run([good_image, "--model", path, "--no-save", "--json", "--classes", "street10"], capsys)
    assert set(json.loads(out)[0]["region"]) == {"western", "eastern"}


def test_image_size_of_a_model_that_accepts_any_size(models_dir):
    inp = keras.Input((None, None, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inp))
    logits = {n: keras.layers.Dense(k, name=f"{n}_logits")(x) for n, k in (("region", 2), ("city", 10))}
    model = keras.Model(inp, logits)
    path = save_model(model, models_dir / "any.keras", image_size=[48, 40])
    assert inference.load_model(path).image_size == (48, 40)
    inference.sidecar_path(path).write_text(json.dumps({"image_size": "big"}))
    with pytest.raises(inference.ModelError, match="Invalid `image_size`"):
        inference.load_model(path)


def test_decompression_bombs_are_refused(tiny_model, good_image, server, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # our 70x40 and 48x36 images now count as bombs
    argv = [good_image, f"{server}/street.jpg", "--model", tiny_model, "--no-save", "--allow-private"]
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    assert err.count("decompression bomb") == 2 and "Cannot read image" in err and "not a readable image" in err


def test_rank_and_top_are_checked(tiny_model, good_image):
    loaded = inference.load_model(tiny_model)
    image = np.asarray(Image.open(good_image))
    with pytest.raises(ValueError, match=r"Invalid `rank`: expected an int in \[1, 10\]"):
        inference.analyze_images([image], loaded, rank=0)
    with pytest.raises(ValueError, match=r"Invalid `top`: expected an int in \[1, 10\]"):
        inference.analyze_images([image], loaded, top=11)
    parser = analyze.add_arguments(argparse.ArgumentParser())
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["x.jpg", "--rank", bad])
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, received 'two'"):
        analyze._positive_int("two")


def test_a_model_with_streetlib_s_own_layer_loads_in_a_fresh_process(tmp_path):
    from conftest import run_script

    from streetlib.classes import SYNTH10
    from streetlib.models.network import build_model

    path = tmp_path / "avgmax.keras"
    kwargs = dict(cut="block1_pool", head="conv", pooling="avgmax", filters=4, name="avgmax_head")
    build_model(input_shape=(32, 32, 3), classes=SYNTH10, **kwargs).save(path)
    # A fresh process has imported nothing that registers GlobalAvgMaxPooling2D: only the loader can make it known.
    proc = run_script(f"from streetlib.inference import load_model; print(load_model({str(path)!r}).model.name)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "avgmax_head"


def test_method_draws_that_method_s_maps_and_all_draws_every_method(tiny_model, good_image, tmp_path, capsys):
    from streetlib.attribution.registry import METHODS

    status, out, _ = run([good_image, "--model", tiny_model, "--out", tmp_path, "--method", "saliency"], capsys)
    assert status == 0 and (tmp_path / "street_saliency.png").is_file()
    assert f"figure: {tmp_path / 'street_saliency.png'}" in out
    status, _, _ = run([good_image, "--model", tiny_model, "--out", tmp_path, "--method", "all", "--rank", "2"], capsys)
    assert status == 0
    with Image.open(tmp_path / "street_methods.png") as figure:
        width, height = figure.size
    # One column per method plus the image, one row per output: the figure is laid out as its grid.
    assert width / height == pytest.approx((len(METHODS) + 1) * 2.1 / (2 * 2.3), rel=0.02)


def test_an_unknown_method_or_method_with_only_cam_is_refused(tiny_model, good_image, tmp_path, capsys):
    status, _, err = run([good_image, "--model", tiny_model, "--out", tmp_path, "--method", "lime"], capsys)
    assert status == 2 and "Invalid --method 'lime'. Expected 'all' or one of [" in err
    argv = [good_image, "--model", tiny_model, "--out", tmp_path, "--method", "rise", "--only-cam"]
    status, _, err = run(argv, capsys)
    assert status == 2 and "--only-cam draws Grad-CAM only" in err


def test_analyze_images_explains_the_class_of_the_rank_asked_with_every_method(tiny_model, good_image):
    loaded = inference.load_model(tiny_model)
    image = np.asarray(Image.open(good_image).convert("RGB"))
    _, _, alone = inference.analyze_images([image], loaded, methods=["grad_cam"], rank=2)
    results, fitted, maps = inference.analyze_images([image], loaded, methods=["grad_cam", "occlusion"], rank=2)
    assert list(maps) == ["grad_cam", "occlusion"]
    for output in ("region", "city"):
        for method in ("grad_cam", "occlusion"):
            np.testing.assert_array_equal(maps[method][output].target, alone["grad_cam"][output].target)
            assert maps[method][output].maps.shape == (1, *fitted.shape[1:3])
        assert results[0]["explained"][output]["rank"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Hostile inputs of the batch: each bad one gets its line, the good ones their results


def test_a_file_name_that_is_not_utf8_is_analysed_and_shown_escaped(tiny_model, good_image, tmp_path, capsys):
    path = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")
    Path(path).write_bytes(Path(good_image).read_bytes())
    status, out, err = run_cli([path, good_image, "--model", tiny_model, "--out", tmp_path / "figs"], capsys)
    assert status == 0, err
    shown = f"{tmp_path}/caf\\xe9.png"
    assert f"{shown} (70x40)" in out and f"{good_image} (70x40)" in out
    assert f"figure: {tmp_path}/figs/caf\\xe9_gradcam.png" in out
    assert sorted(os.listdir(os.fsencode(tmp_path / "figs"))) == [b"caf\xe9_gradcam.png", b"street_gradcam.png"]
    status, out, _ = run_cli([path, "--model", tiny_model, "--no-save", "--json"], capsys)
    assert status == 0 and json.loads(out)[0]["input"] == shown


def test_a_full_disk_loses_no_result(tiny_model, good_image, tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    other = tmp_path / "other.png"
    other.write_bytes(Path(good_image).read_bytes())
    status, out, err = run_cli([good_image, other, "--model", tiny_model, "--out", tmp_path / "figs"], capsys)
    assert status == 1
    assert f"{good_image} (70x40)" in out and f"{other} (70x40)" in out and out.count("  top 3 cities: ") == 2
    lines = err.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("street", "other"), strict=True):
        assert line.startswith(f"streetlib analyze: error: cannot write the figure {tmp_path / 'figs' / name}")
        assert "No space left on device" in line and "--no-save" in line
    assert not list((tmp_path / "figs").iterdir())  # no half-written figure is left
    status, out, _ = run_cli([good_image, "--model", tiny_model, "--out", tmp_path / "figs", "--json"], capsys)
    (record,) = json.loads(out)
    assert status == 1 and record["region"] and record["figure"] is None and "No space left" in record["error"]


@pytest.mark.parametrize("where", ["below-a-file", "a-file"])
def test_an_unusable_out_fails_once_up_front(where, tiny_model, good_image, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out_dir = tmp_path / "notes.txt" / "figs" if where == "below-a-file" else tmp_path / "notes.txt"
    status, out, err = run_cli([good_image, good_image, "--model", tiny_model, "--out", out_dir], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"streetlib analyze: error: cannot write figures to --out {out_dir}: ")
    assert err.count("\n") == 1 and "Pass another --out, or --no-save." in err


def test_only_cam_draws_a_large_image_at_a_bounded_size(tiny_model, tmp_path, monkeypatch, capsys):
    from streetlib.attribution import plots

    # The memory of this machine, scaled down: an overlay over more than 200 x 200 px fails as numpy does.
    real_overlay = plots.overlay

    def overlay(image, cam, **kwargs):
        if image.shape[0] * image.shape[1] > 200 * 200:
            raise MemoryError(f"Unable to allocate an array of shape {image.shape}")
        return real_overlay(image, cam, **kwargs)

    monkeypatch.setattr(plots, "overlay", overlay)
    monkeypatch.setattr(analyze, "FIGURE_MAX_SIDE", 200, raising=False)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (450, 600, 3), dtype=np.uint8)).save(big)
    status, out, err = run_cli([big, "--model", tiny_model, "--out", tmp_path, "--only-cam"], capsys)
    assert status == 0, err
    assert f"{big} (600x450)" in out and (tmp_path / "big_cam.png").is_file()


# ---------------------------------------------------------------------------------------------------------------
# URLs: no link-local or cloud-metadata address, in any encoding or after any redirect; private ones on request


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket connects to; any but 127.0.0.1 fails the test before a packet is sent."""
    attempts = []
    real = socket.socket.connect

    def connect(sock, address):
        attempts.append(address[0])
        assert address[0] == "127.0.0.1", f"a connection to {address} was attempted"
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def resolver(monkeypatch):
    """DNS without the network: names in the returned dict resolve to its addresses; numeric hosts are parsed by
    the real resolver with AI_NUMERICHOST (so 2852039166 becomes 169.254.169.254 as it would, without a query)."""
    names = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host in names:
            return [
                (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in names[host]
            ]
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_decimal_hosts_resolve_to_the_dotted_address():
    # What the refusal relies on: the resolver, not the URL's text, says where a host is.
    ((*_, address),) = socket.getaddrinfo(
        "2852039166", 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
    )
    assert address == ("169.254.169.254", 80)


@pytest.mark.parametrize(
    "url, addresses",
    [
        ("http://169.254.169.254/latest/meta-data/", None),
        ("http://2852039166/latest/meta-data/", None),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", None),
        ("http://[::ffff:a9fe:a9fe]/", None),
        ("http://[fe80::1]/", None),
        ("https://metadata.aliyun.test/", ["100.100.100.200"]),
        ("http://metadata.ec2.test/", ["fd00:ec2::254"]),
        ("http://rebound.test/", ["93.184.216.34", "169.254.169.254"]),  # every address counts, not the first
    ],
)
def test_link_local_and_metadata_addresses_are_refused(url, addresses, resolver, connections):
    if addresses:
        resolver[urlsplit(url).hostname] = addresses
    with pytest.raises(inference.InputError) as err:
        inference.fetch_url(url, allow_private=True)
    message = str(err.value)
    assert message.startswith(f"{url}: refused: ") and "link-local or cloud-metadata address" in message
    assert "\n" not in message and connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/x.jpg",
        "http://172.16.0.1/x.jpg",
        "http://192.168.1.1/x.jpg",
        "http://127.0.0.1:9/x.jpg",
        "http://[::1]/x.jpg",
        "http://printer.test/x.jpg",
    ],
)
def test_private_addresses_are_refused_unless_allowed(url, resolver, connections):
    resolver["printer.test"] = ["192.168.1.20"]
    with pytest.raises(inference.InputError) as err:
        inference.fetch_url(url)
    message = str(err.value)
    assert message.startswith(f"{url}: refused: ") and "a private or loopback address" in message
    assert "Pass --allow-private" in message and "\n" not in message and connections == []


def test_allow_private_reaches_the_local_server_from_the_command_line(server, tiny_model, connections, capsys):
    url = f"{server}/street.jpg"
    status, out, err = run_cli([url, "--model", tiny_model, "--no-save"], capsys)
    assert status == 1 and out == "" and err.count("\n") == 1 and "--allow-private" in err
    status, out, err = run_cli([url, "--model", tiny_model, "--no-save", "--allow-private"], capsys)
    assert status == 0 and f"{url} (48x36)" in out


def test_every_redirect_is_checked(server, connections):
    assert inference.fetch_url(f"{server}/to-street", allow_private=True) == jpeg_bytes()
    url = f"{server}/to-metadata"
    with pytest.raises(inference.InputError) as err:
        inference.fetch_url(url, allow_private=True)
    message = str(err.value)
    assert message.startswith(f"{url}: refused: redirected to http://169.254.169.254/latest/meta-data/, ")
    assert "link-local or cloud-metadata address" in message and "169.254.169.254" not in connections


def test_a_redirect_loop_is_one_line(server, connections):
    url = f"{server}/loop"
    with pytest.raises(inference.InputError) as err:
        inference.fetch_url(url, allow_private=True)
    assert str(err.value) == f"{url}: too many redirects (more than {inference.MAX_REDIRECTS}). Check the URL."


# ---------------------------------------------------------------------------------------------------------------
# Without --model: the headline model of the results on disk, as notebook 05 picks it


def write_evals(root, experiment, config_name, city, *, seeds=(42, 43), dataset="synth-demo"):
    """Validation rows of a config's runs on ``dataset``, as `evaluate` writes them (accuracy of both outputs, best
    checkpoint)."""
    import pandas as pd

    from streetlib.evaluation.evaluate import COLUMNS
    from streetlib.runs import RunId, RunLayout

    layout = RunLayout(hists_dir=root / "hists", dataset=dataset)
    for seed in seeds:
        run_id = RunId(experiment, config_name, seed)
        rows = [
            {
                "experiment": experiment,
                "run": run_id.name,
                "config_name": config_name,
                "seed": seed,
                "checkpoint": "best",
                "subset": "val",
                "output": output,
                "metric": "accuracy",
                "value": value,
            }
            for output, value in (("region", 0.9), ("city", city))
        ]
        layout.evals(run_id).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(layout.evals(run_id), index=False)


@pytest.fixture
def demo_root(tmp_path, monkeypatch):
    """A STREETLIB_ROOT as `make demo` leaves it (eval rows of notebooks 03 and 04, their models), as the cwd."""
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes((80, 60)))
    return tmp_path


def test_readme_analyzer_examples_run_on_the_headline_model(demo_root, server, tiny_model, capsys):
    from streetlib.runs import RunId, RunLayout

    write_evals(demo_root, "03-pretrained", "slow-transfer", 0.5)
    write_evals(demo_root, "04-finetune", "quick-finetune-all", 0.7)
    headline = RunLayout(dataset="synth-demo").model(RunId("04-finetune", "quick-finetune-all", 42), "best")
    headline.parent.mkdir(parents=True)
    save_model(convention_model(32), headline)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## The analyzer", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0] for line in block.strip().splitlines()]
    assert len(commands) == 3 and all(c.startswith("streetlib analyze ") for c in commands)
    for command in commands:
        # The README's web address and run name stand for the user's: the local test server and the headline run.
        command = command.replace("https://example.org/street.jpg", f"{server}/street.jpg --allow-private")
        command = command.replace("<run>", headline.name.removesuffix(".best.keras"))
        status, out, err = run_cli(shlex.split(command)[2:], capsys)
        assert status == 0, f"{command}\n{err}"
        if "--json" in command:
            assert json.loads(out)[0]["size"] == [80, 60]
        else:
            assert "photo.jpg (80x60)" in out
        if "--model" in command:
            assert err == ""
        else:
            assert err == (
                f"streetlib analyze: using the headline model {headline} (best mean validation city accuracy in "
                "03-pretrained and 04-finetune of synth-demo, as notebook 05). Pass --model for another.\n"
            )
    assert sorted(p.name for p in (demo_root / "figs" / "analyze").iterdir()) == [
        "photo_gradcam.png",
        "photo_integrated_gradients.png",
        "street_gradcam.png",
    ]


def test_without_results_or_model_file_analyze_says_to_run_make_demo(demo_root, capsys):
    status, out, err = run_cli(["photo.jpg", "--no-save"], capsys)
    assert status == 2 and out == ""
    assert err == (
        "streetlib analyze: error: no trained models: no evaluation results under "
        f"{demo_root / 'hists'} (03-pretrained, 04-finetune). Run `make demo`, or pass --model PATH.\n"
    )
    write_evals(demo_root, "03-pretrained", "slow-transfer", 0.5)
    write_evals(demo_root, "04-finetune", "quick-finetune-all", 0.7)
    status, out, err = run_cli(["photo.jpg", "--no-save"], capsys)
    missing = demo_root / "models" / "synth-demo" / "04-finetune" / "quick-finetune-all-seed42.best.keras"
    assert status == 2 and out == ""
    assert err == (
        f"streetlib analyze: error: the headline model {missing} is not on disk (a fresh clone has the results, "
        "not the models). Run `make demo`, or pass --model PATH.\n"
    )
    # Results of a second dataset: which one's headline model is meant must be said.
    write_evals(demo_root, "03-pretrained", "slow-transfer", 0.5, dataset="street10")
    status, _, err = run_cli(["photo.jpg", "--no-save"], capsys)
    assert status == 2 and err == (
        "streetlib analyze: error: results of several datasets on disk (street10, synth-demo): pass --dataset NAME.\n"
    )
    status, _, err = run_cli(["photo.jpg", "--no-save", "--dataset", "street10"], capsys)
    assert status == 2 and f"no evaluation results under {demo_root / 'hists' / 'street10'}" in err
