"""The inference API: load a trained street classifier, read images from files or URLs, classify and explain them.

The model file is loaded with Keras's safe mode. What the model expects comes from a sidecar JSON beside it,
``<model path without suffix>.json`` (for ``models/demo.keras``, ``models/demo.json``), written by
`streetlib.training.train.run_phase`, with the keys:

- ``normalization``: one of `streetlib.data.pipeline.NORMALIZATIONS`;
- ``classes``: the class spec as ``ClassSpec.to_dict()`` (``{"name": ..., "regions": {region: [city, ...]}}``);
- ``image_size``: int or [height, width], used when the model accepts any input size.

Arguments of `load_model` override it; without them, the defaults are 'street10' and 'samplewise'.

URLs are fetched only from addresses on the public internet (link-local and cloud-metadata addresses never, private
and loopback ones on request), with a timeout, a size cap and a content-type check: see `fetch_url`.

Bad input (a missing file, a file that is not an image, a malformed, refused or unreachable URL, one that does not
serve an image or not within the timeout) raises `InputError` naming it; a model that cannot be loaded or lacks the
``region`` and ``city`` outputs raises `ModelError`. Keras, TensorFlow and the attribution code are imported inside
the functions that use them, so that importing this module costs no TensorFlow start-up.
"""

import http.client
import io
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit
from zipfile import BadZipFile, is_zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from streetlib.classes import OUTPUTS, ClassSpec, get_class_spec
from streetlib.data.images import fit_image, to_rgb
from streetlib.runs import sidecar_path

DEFAULT_NORMALIZATION = "samplewise"
DEFAULT_CLASSES = "street10"
URL_TIMEOUT = 10.0  # seconds
MAX_DOWNLOAD_BYTES = 20 * 2**20
CHUNK_BYTES = 64 * 2**10
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Cloud metadata services outside 169.254.0.0/16: Alibaba Cloud's, and AWS's on IPv6.
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("100.100.100.200", "fd00:ec2::254")))
# PIL's failures on damaged data (a truncated file, a broken stream), besides UnidentifiedImageError (not an image
# it reads) and DecompressionBombError (an absurd pixel count), which get messages of their own.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)


class InputError(ValueError):
    """One input cannot be analysed; the message is the line shown to the user."""


class ModelError(ValueError):
    """The model (or its sidecar) cannot be used: the command stops."""


@dataclass
class LoadedModel:
    """A model ready for analysis.

    Attributes:
        model: the `keras.Model`.
        spec: the `ClassSpec` naming its outputs' classes.
        normalization: str, how its inputs are normalised.
        image_size: (height, width) of its inputs.
        path: `Path` of the model file.
    """

    model: object
    spec: ClassSpec
    normalization: str
    image_size: tuple
    path: Path


def read_sidecar(model_path):
    """The sidecar dict of a model file ({} when there is none).

    Raises:
        ModelError: the sidecar is not a JSON object.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"Model sidecar {path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ModelError(f"Model sidecar {path} must hold a JSON object. Received {type(meta).__name__}.")
    return meta


def _image_size(value, source):
    size = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else None
    if size is None or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ModelError(f"Invalid `image_size` in {source}: expected an int or [height, width]. Received: {value!r}")
    return size


def load_model(path, *, classes=None, normalization=None):
    """Load a model for analysis (Keras safe mode) and check that it has the outputs and classes expected.

    Args:
        path: str or Path of a ``.keras`` file.
        classes: None (the sidecar's, else 'street10'), a built-in spec name or a YAML path.
        normalization: None (the sidecar's, else 'samplewise') or one of `streetlib.data.pipeline.NORMALIZATIONS`.

    Returns:
        `LoadedModel`.

    Raises:
        ModelError: the file is missing or not a loadable model, the sidecar is malformed, the model has no
            ``region``/``city`` logits, or their sizes do not match the class spec.
    """
    import keras

    from streetlib.attribution.explainer import logits_tensor, model_input_size
    from streetlib.data.pipeline import check_normalization
    from streetlib.models.network import CUSTOM_OBJECTS

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file not found: {path}. Train one first, or pass --model PATH.")
    # Keras reports any .keras file that is not a zip as "File not found", which sends users looking for the file.
    if path.suffix == ".keras" and not is_zipfile(path):
        raise ModelError(
            f"Cannot load model {path}: the file exists but is not a Keras model archive (a .keras file is a zip "
            f"written by `model.save()`). Pass the .keras file that training wrote, or save the model again."
        )
    meta = read_sidecar(path)
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False, custom_objects=CUSTOM_OBJECTS)
    except (ValueError, OSError, BadZipFile, KeyError, TypeError) as err:
        raise ModelError(f"Cannot load model {path} (Keras safe mode): {err}") from err
    try:
        if classes is not None:
            spec = get_class_spec(classes)
        elif "classes" in meta:
            spec = ClassSpec.from_dict(meta["classes"], source=str(sidecar_path(path)))
        else:
            spec = get_class_spec(DEFAULT_CLASSES)
        normalization = check_normalization(normalization or meta.get("normalization", DEFAULT_NORMALIZATION))
    except (ValueError, FileNotFoundError) as err:
        raise ModelError(str(err)) from err
    sizes = {}
    for output, expected in zip(OUTPUTS, (spec.num_regions, spec.num_classes), strict=True):
        try:
            sizes[output] = int(logits_tensor(model, output).shape[-1])
        except ValueError as err:
            raise ModelError(f"Model {path} lacks the expected {output!r} output: {err}") from err
        if sizes[output] != expected:
            raise ModelError(
                f"Model {path} has {sizes[output]} {output} classes but class spec {spec.name!r} has {expected}. "
                f"Pass the model's classes with --classes."
            )
    size = model_input_size(model) or _image_size(meta.get("image_size", 224), sidecar_path(path))
    return LoadedModel(model=model, spec=spec, normalization=normalization, image_size=size, path=path)


def is_url(source):
    """True for http:// and https:// addresses, malformed ones included (so that they are reported as URLs)."""
    return str(source).lower().startswith(("http://", "https://"))


def _check_url(url):
    """Check that an address names a host, and a port if any, that can be requested.

    Args:
        url: str, http or https.

    Raises:
        InputError: no host, a malformed IPv6 host, or a port that is not a number in [0, 65535].
    """
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port parses the port, raising ValueError on a bad one
    except ValueError as err:
        raise InputError(f"{url}: invalid URL ({err}). Check the host and port.") from err
    if not host:
        raise InputError(f"{url}: invalid URL (no host name). Expected http(s)://HOST[:PORT]/PATH.")


def fetch_url(url, *, timeout=URL_TIMEOUT, max_bytes=MAX_DOWNLOAD_BYTES, allow_private=False):
    """Download an image: bytes, after checking the address, the content type and the size.

    Redirects are followed, at most `MAX_REDIRECTS`, each to an http(s) address checked as the first. Every
    address a host resolves to is checked before any connection (see `_check_address`) and the connection goes
    to one of the addresses checked, never to a second answer of the resolver (DNS rebinding). Proxies set in
    the environment are not used: through one, the address connected to could not be checked.

    Args:
        url: str, http or https.
        timeout: float, seconds for the whole download, redirects included. Default 10. A server silent that long
            fails at once; one that keeps sending, too slowly, is cut off at the first chunk of the body past the
            deadline (so within twice the timeout).
        max_bytes: int, the largest body accepted. Default 20 MiB.
        allow_private: bool, also fetch from private and loopback addresses (your own network). Default False.
            Link-local and cloud-metadata addresses are refused regardless.

    Raises:
        InputError: a malformed address, a refused address, unreachable, an HTTP error, too many redirects, a
            timeout, a content type other than image/*, too large, or a connection broken off.
    """
    deadline = time.monotonic() + timeout
    hop = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            connection = _request(hop, url, timeout=deadline - time.monotonic(), allow_private=allow_private)
            try:
                response = connection.getresponse()
                location = response.getheader("Location") if response.status in _REDIRECT_STATUSES else None
                if location is None:
                    return _read_response(response, url, deadline=deadline, timeout=timeout, max_bytes=max_bytes)
            finally:
                connection.close()
            hop = urljoin(hop, location)
            if not is_url(hop):
                raise InputError(f"{url}: redirected to {hop}, not an http(s) URL. Check the URL.")
        raise InputError(f"{url}: too many redirects (more than {MAX_REDIRECTS}). Check the URL.")
    except _Refused as err:
        where = "" if hop == url else f"redirected to {hop}, where "
        raise InputError(f"{url}: refused: {where}{err}") from err
    except TimeoutError as err:
        raise InputError(f"{url}: no answer within {timeout:g} s.") from err
    except (http.client.InvalidURL, UnicodeEncodeError) as err:
        # http.client sends the path as it is given: it refuses spaces, control and non-ASCII characters.
        raise InputError(
            f"{url}: invalid URL ({err}). Percent-encode spaces and non-ASCII characters (a space is %20)."
        ) from err
    except (http.client.HTTPException, OSError) as err:
        raise InputError(f"{url}: the connection broke off ({type(err).__name__}: {err}). Try again later.") from err


def _request(hop, url, *, timeout, allow_private):
    """Send a GET request for one URL of a redirect chain.

    Args:
        hop: str, the URL requested.
        url: str, the URL the user gave, named in the errors.
        timeout: float, seconds left for the download.
        allow_private: bool, see `fetch_url`.

    Returns:
        The `http.client.HTTPConnection` that sent the request, its response to be read.

    Raises:
        InputError: ``hop`` is malformed, or its host unreachable.
        _Refused: its host resolves to an address refused by `_check_address`.
        TimeoutError: no time is left, or the host did not answer in time.
        http.client.InvalidURL, UnicodeEncodeError: the path cannot be sent as it is.
    """
    _check_url(hop)
    if timeout <= 0:
        raise TimeoutError
    parts = urlsplit(hop)
    kind = _CheckedHTTPSConnection if parts.scheme.lower() == "https" else _CheckedHTTPConnection
    # The port is always given: without one, http.client reads an IPv6 host's last group as the port.
    port = parts.port or kind.default_port
    connection = kind(parts.hostname, port, timeout=timeout, allow_private=allow_private)
    # The request line is built (and its path checked) before connecting, so a malformed path is reported as such.
    connection.putrequest("GET", urlunsplit(("", "", parts.path or "/", parts.query, "")))
    connection.putheader("User-Agent", "streetlib-analyze")
    connection.putheader("Connection", "close")
    try:
        connection.connect()
    except (_Refused, TimeoutError):
        raise
    except OSError as err:
        raise InputError(f"{url}: unreachable ({err}).") from err
    connection.endheaders()
    return connection


def _read_response(response, url, *, deadline, timeout, max_bytes):
    """The body of the final response of a redirect chain, after checking its status, type and size.

    Raises:
        InputError: an HTTP error status, a content type other than image/*, or a body too large or too slow.
    """
    if response.status >= 300:
        raise InputError(f"{url}: HTTP {response.status} {response.reason}.")
    kind = response.headers.get_content_type()
    if not kind.startswith("image/"):
        raise InputError(f"{url}: served {kind!r}, not an image (expected an image/* content type).")
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise InputError(f"{url}: {int(length)} bytes is over the {max_bytes}-byte limit.")
    return _read_body(response, url, deadline=deadline, timeout=timeout, max_bytes=max_bytes)


class _Refused(Exception):
    """A host resolves to an address that must not be fetched from; the message says which and why."""


def _check_address(host, address, *, allow_private=False):
    """Check that an address a host resolved to may be fetched from.

    Link-local addresses (169.254.0.0/16, fe80::/10) and cloud-metadata services (`METADATA_ADDRESSES`) are always
    refused: they answer with the credentials of the machine. Other addresses that are not on the public internet
    (private ranges, loopback, unspecified, reserved) are refused unless ``allow_private``. An IPv4 address written
    as IPv6 (``::ffff:169.254.169.254``) is checked as the IPv4 address it reaches.

    Args:
        host: str, the host name, named in the error.
        address: str, an address as `socket.getaddrinfo` returns it (an IPv6 one may end in ``%scope``).
        allow_private: bool. Default False.

    Raises:
        _Refused: the address is refused.
    """
    ip = ipaddress.ip_address(address)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    if ip.is_link_local or ip in METADATA_ADDRESSES:
        raise _Refused(f"{host} resolves to {address}, a link-local or cloud-metadata address: never fetched.")
    if not (ip.is_global or allow_private):
        raise _Refused(
            f"{host} resolves to {address}, a private or loopback address (not on the public internet). "
            f"Pass --allow-private to fetch from your own network."
        )


def _connect(host, port, timeout, *, allow_private):
    """A TCP socket connected to ``host``, at one of the addresses it resolves to, all of them checked first.

    Raises:
        _Refused: an address is refused by `_check_address`.
        OSError: the host does not resolve, or no address accepts the connection (the last address's error).
    """
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in found:
        _check_address(host, sockaddr[0], allow_private=allow_private)
    error = OSError(f"{host} resolves to no address")
    for family, kind, proto, _, sockaddr in found:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection that connects only to a checked address of its host (see `_connect`).

    Args:
        host: str, the host name (sent as the Host header).
        port: int.
        timeout: float, seconds for the connection and each read.
        allow_private: bool, see `_check_address`.
    """

    def __init__(self, host, port, *, timeout, allow_private):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private

    def connect(self):
        self.sock = _connect(self.host, self.port, self.timeout, allow_private=self.allow_private)


class _CheckedHTTPSConnection(_CheckedHTTPConnection):
    """The same over TLS: the certificate is checked against the host name, as a browser does."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host, port, *, timeout, allow_private):
        super().__init__(host, port, timeout=timeout, allow_private=allow_private)
        self.tls = ssl.create_default_context()

    def connect(self):
        super().connect()
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def _read_body(response, url, *, deadline, timeout, max_bytes):
    """Read a response body chunk by chunk as it arrives.

    Args:
        response: the open `http.client.HTTPResponse`.
        url: str, named in the errors.
        deadline: float, the `time.monotonic` time by which the body must have arrived.
        timeout: float, the seconds that deadline stands for, named in the error.
        max_bytes: int, the largest body accepted.

    Raises:
        InputError: the body is over ``max_bytes``, or still arriving at the deadline.
    """
    chunks, size = [], 0
    # read1 returns after one socket read, so a server that sends a byte at a time cannot hold a read open.
    while chunk := response.read1(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise InputError(f"{url}: the body is over the {max_bytes}-byte limit.")
        if time.monotonic() > deadline:
            raise InputError(
                f"{url}: not downloaded within the {timeout:g} s timeout ({size} bytes received): the server is "
                f"too slow. Try again later, or raise --timeout."
            )
        chunks.append(chunk)
    return b"".join(chunks)


def read_input(source, *, timeout=URL_TIMEOUT, max_bytes=MAX_DOWNLOAD_BYTES, allow_private=False):
    """Read an image file or URL as RGB uint8 `(H, W, 3)` at its own size (EXIF orientation applied).

    Args:
        source: str or Path, an image file or an http(s) URL.
        timeout: float, seconds for a URL's whole download (see `fetch_url`).
        max_bytes: int, the largest download accepted.
        allow_private: bool, also fetch URLs from private and loopback addresses (see `fetch_url`).

    Raises:
        InputError: the file is missing, a directory, cannot be opened or is not a readable image, or the URL fails
            (see `fetch_url`) or does not serve a readable image.
    """
    if is_url(source):
        body = fetch_url(str(source), timeout=timeout, max_bytes=max_bytes, allow_private=allow_private)
        return _decode(
            io.BytesIO(body),
            f"{source}: the download is not a readable image",
            "Check that the URL serves the image itself.",
        )
    path = Path(source)
    try:
        if path.is_dir():
            raise InputError(f"{path} is a directory, not an image file. Pass the image files in it instead.")
        if not path.is_file():
            raise InputError(f"Image not found: {path}")
        with path.open("rb") as file:
            return _decode(
                file,
                f"Cannot read image {path}",
                "Replace it with a readable JPEG, PNG, WebP or BMP file, or leave it out.",
            )
    except OSError as err:
        reason = err.strerror or err
        raise InputError(f"Cannot open image {path}: {reason}. Check the path and its permissions.") from err


def _decode(file, failure, advice):
    """Decode an image as RGB uint8 `(H, W, 3)` (EXIF orientation applied).

    Args:
        file: a binary file object.
        failure: str, the start of the error message, naming the input.
        advice: str, what to do, ending the error message.

    Raises:
        InputError: the data is not an image, is damaged, or has an absurd pixel count.
    """
    try:
        with Image.open(file) as img:
            img.load()
            return np.asarray(to_rgb(img), dtype=np.uint8)
    except Image.DecompressionBombError as err:
        raise InputError(f"{failure}: {err} Use a smaller image.") from err
    except UnidentifiedImageError as err:
        raise InputError(f"{failure}: not an image, or in a format Pillow cannot read. {advice}") from err
    except _DECODE_ERRORS as err:
        raise InputError(f"{failure}: the image data is damaged ({err}). {advice}") from err


def _class_entry(names, probs, k):
    return {"class": names[k], "probability": round(float(probs[k]), 4)}


def analyze_images(images, loaded, *, methods=None, rank=1, top=3, layer=None, policy="crop"):
    """Classify and explain a batch of images in one call.

    Args:
        images: list of uint8 `(H, W, 3)` RGB, any sizes.
        loaded: `LoadedModel`.
        methods: None (default: the original study's three, `streetlib.attribution.registry.ORIGINAL`) or a
            sequence of `registry.METHODS` names. The first one picks the classes explained; the results are read
            from its logits.
        rank: int, explain the class of this rank (1: the prediction); capped at the number of regions for the
            region output.
        top: int, cities listed per image.
        layer: str or None, the layer of the methods that read one (the others ignore it).
        policy: how images are fitted to the model input ('crop', 'pad', 'stretch').

    Returns:
        (results, fitted, explanation): a list of dicts (``region``: {name: probability}, ``cities``: top-K
        [{class, probability}], ``explained``: {output: {class, probability, rank}}), the fitted uint8 images
        `(n, h, w, 3)`, and dict method -> dict output -> `Attribution` (maps float32 `(n, h, w)` in [0, 1]), as
        `streetlib.attribution.registry.explain` returns it.
    """
    from streetlib.attribution.explainer import model_inputs
    from streetlib.attribution.registry import ORIGINAL, explain

    n_cities = loaded.spec.num_classes
    if not 1 <= rank <= n_cities:
        raise ValueError(f"Invalid `rank`: expected an int in [1, {n_cities}]. Received: rank={rank!r}")
    if not 1 <= top <= n_cities:
        raise ValueError(f"Invalid `top`: expected an int in [1, {n_cities}]. Received: top={top!r}")
    fitted = np.stack([fit_image(Image.fromarray(im), loaded.image_size, policy=policy) for im in images])
    x = model_inputs(fitted, normalization=loaded.normalization)
    methods = ORIGINAL if methods is None else methods
    explanation = explain(x, loaded.model, methods=methods, outputs=OUTPUTS, layer=layer, rank=rank)
    first = next(iter(explanation.values()))
    names = {o: loaded.spec.class_names(o) for o in OUTPUTS}
    results = []
    for i in range(len(fitted)):
        probs = {o: first[o].probs[i] for o in OUTPUTS}
        targets = {o: int(first[o].target[i]) for o in OUTPUTS}
        order = np.argsort(-probs["city"], kind="stable")[:top]
        results.append(
            {
                "region": {n: round(float(p), 4) for n, p in zip(names["region"], probs["region"], strict=True)},
                "cities": [_class_entry(names["city"], probs["city"], k) for k in order],
                "explained": {
                    o: {**_class_entry(names[o], probs[o], t), "rank": int(np.sum(probs[o] > probs[o][t])) + 1}
                    for o, t in targets.items()
                },
            }
        )
    return results, fitted, explanation
