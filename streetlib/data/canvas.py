"""What a synthetic street scene is drawn on: the perspective camera, the canvas that keeps the cue mask in step
with the picture, and the colour helpers every drawing step shares."""

from dataclasses import dataclass

from PIL import Image, ImageDraw


@dataclass
class Camera:
    """A pinhole camera looking down the street: ``focal`` length and principal column ``cx`` in canvas pixels, the
    ``horizon`` row, and its ``height`` above the road in metres."""

    focal: float
    cx: float
    horizon: float
    height: float

    def project(self, x, y, z):
        """Screen (column, row) of world point x (right), y (up), z (ahead) in metres."""
        return self.cx + self.focal * x / z, self.horizon + self.focal * (self.height - y) / z


class Canvas:
    """An RGB picture and its cue mask, drawn together so that whatever is drawn over a cue clears its mask."""

    def __init__(self, sky):
        self.image = Image.fromarray(sky)
        self.mask = Image.new("L", self.image.size, 0)
        self.size = self.image.size[0]
        self._draw = ImageDraw.Draw(self.image)
        self._mask_draw = ImageDraw.Draw(self.mask)
        self._has_cue = False

    def polygon(self, points, fill):
        self._draw.polygon(points, fill=fill)
        if self._has_cue:
            self._mask_draw.polygon(points, fill=0)

    def rectangle(self, box, fill):
        x0, y0, x1, y1 = box
        if x1 < 0 or y1 < 0 or x0 >= self.size or y0 >= self.size:
            return
        box = (x0, y0, max(x0, x1), max(y0, y1))
        self._draw.rectangle(box, fill=fill)
        if self._has_cue:
            self._mask_draw.rectangle(box, fill=0)

    def ellipse(self, box, fill):
        self._draw.ellipse(box, fill=fill)
        if self._has_cue:
            self._mask_draw.ellipse(box, fill=0)

    def line(self, points, fill, width):
        self._draw.line(points, fill=fill, width=width)
        if self._has_cue:
            self._mask_draw.line(points, fill=0, width=width)

    def paste_cue(self, tile, outline, corner):
        self.image.paste(tile, corner, outline)
        self.mask.paste(1, (*corner, corner[0] + tile.size[0], corner[1] + tile.size[1]), outline)
        self._has_cue = True


def clip_channel(value):
    """A colour channel clipped to [0, 255], as an int (truncated). min/max rather than np.clip: np.clip on one
    scalar costs microseconds, and these run about a million times per 3,000 images, for the same result."""
    return int(min(max(value, 0), 255))


def jitter(rng, colour, amount):
    """``colour`` (an RGB tuple) with each channel moved by an int drawn from [-amount, amount], clipped."""
    return tuple(clip_channel(c + rng.integers(-amount, amount + 1)) for c in colour)


def scale(colour, factor):
    """``colour`` (an RGB tuple) with each channel multiplied by ``factor``, clipped."""
    return tuple(clip_channel(c * factor) for c in colour)


def pick(rng, options):
    """One of ``options``, drawn uniformly (one draw of ``rng``)."""
    return options[rng.integers(len(options))]
