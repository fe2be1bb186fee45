"""One image file to RGB pixels: reading it safely, converting any PIL mode to RGB, and the resize policies.

`DataError` is the data package's error for anything wrong with a dataset's files, an unreadable image among them.
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RESIZE_POLICIES = ("crop", "pad", "stretch")


class DataError(ValueError):
    """A dataset file or folder is missing, malformed or inconsistent with the class spec."""


def fit_image(image, size, *, policy="crop"):
    """Bring a PIL image to ``size`` without silent aspect distortion.

    Args:
        image: `PIL.Image` in RGB.
        size: int or (height, width) in pixels.
        policy: 'crop' (default: scale so the image covers the target, then cut the centre), 'pad' (scale so the
            image fits inside, then pad with black, centred) or 'stretch' (resize straight to the target, distorting
            the aspect ratio, as the original study did; only when asked).

    Returns:
        uint8 `(height, width, 3)`.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if policy == "stretch":
        out = image.resize((w, h), Image.Resampling.BICUBIC)
    elif policy == "crop":
        out = ImageOps.fit(image, (w, h), method=Image.Resampling.BICUBIC)
    elif policy == "pad":
        out = ImageOps.pad(image, (w, h), method=Image.Resampling.BICUBIC, color=(0, 0, 0))
    else:
        raise ValueError(f"Invalid `policy`. Expected one of {RESIZE_POLICIES}. Received: policy={policy!r}")
    return np.asarray(out, dtype=np.uint8)


def to_rgb(image):
    """Convert a PIL image of any mode to RGB, upright: EXIF orientation applied, alpha composited on white,
    16-bit and 32-bit grayscale scaled to 8 bits (see `_deep_gray_to_uint8`).

    Raises:
        ValueError: 32-bit grayscale outside the ranges `_deep_gray_to_uint8` reads.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_deep_gray_to_uint8(np.asarray(image), image.mode))
    if image.mode == "P" or image.mode == "LA" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _deep_gray_to_uint8(pixels, mode):
    """Scale grayscale of more than 8 bits to uint8, by the range the mode or the values give.

    16-bit modes (``'I;16*'``) span [0, 65535]. 32-bit integer (``'I'``) and float (``'F'``) images take the first
    range that holds all their values: [0, 1] (floats only: the float image convention, as in Street10 files),
    [0, 255] (kept as is), [0, 65535] (the 16-bit scale). So an all-dark float image on the 0-255 scale, every value
    <= 1, reads as [0, 1].

    Args:
        pixels: array `(H, W)`, the image's values.
        mode: str, its PIL mode.

    Returns:
        uint8 `(H, W)`.

    Raises:
        ValueError: values negative, above 65535 or not finite; no range fits them, and clipping would hide it.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    if not np.isfinite(lo + hi) or lo < 0.0 or hi > 65535.0:
        raise ValueError(
            f"its 32-bit pixel values (min {lo:g}, max {hi:g}) are outside [0, 65535]; streetlib reads floats in "
            f"[0, 1] and integers in [0, 255] or [0, 65535]"
        )
    if mode.startswith("I;16") or hi > 255.0:
        top = 65535.0
    elif mode == "F" and hi <= 1.0:
        top = 1.0
    else:
        top = 255.0
    return np.rint(pixels * (255.0 / top)).astype(np.uint8)


def _not_a_file(path):
    """Why the directory entry ``path`` cannot be an image file (str), or None if it is a regular file or absent."""
    if path.is_symlink() and not path.exists():
        return f"it is a broken symbolic link (its target {os.readlink(path)} does not exist). Fix or remove the link."
    if path.is_dir():
        return "it is a directory, not an image file. Rename it or move it out of the folder."
    if path.exists() and not path.is_file():
        # Opening a pipe would block: refuse anything but regular files.
        return "it is not a regular file (a device, pipe or socket). Remove it."
    return None


def read_rgb(path):
    """Read one image file as an upright RGB PIL image at its own size. Raises as `loaders.read_image`."""
    problem = _not_a_file(path)
    if problem:
        raise DataError(f"Cannot read image {path}: {problem}")
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with warnings.catch_warnings():
            # Past MAX_IMAGE_PIXELS Pillow only warns (it refuses at twice that): refuse it there, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"Cannot read image {path}: {err} Replace or remove the file, or raise PIL.Image.MAX_IMAGE_PIXELS if "
            f"you trust it."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err
