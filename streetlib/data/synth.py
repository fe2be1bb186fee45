"""Synthetic street scenes: a demo dataset whose region cue is known pixel for pixel.

Each image is a street seen down its axis: sky, facades with windows on both sides, a road and sidewalks in
perspective, lamps, trees, traffic signs, parked cars, overhead wires and pedestrians, under random camera,
lighting and noise. A few *cue objects* (shop boards, blade signs and round lanterns facing the camera) carry the
region, and their pixels are recorded in a per-image mask.

How the labels are carried, so that explanation methods can be checked against the masks:

- Region lives only inside the masks. Everything else, including where the cue objects are, how big they are and
  their outlines, comes from a random stream that does not depend on the region. Rendering class ``w_k`` and its
  twin ``e_k`` from the same seed gives identical masks and identical pixels outside them.
- City = twin pair x region. The k-th city of each region shares a street style (facade palette, windows, heights,
  road markings, trees, wires) with the k-th city of the other region, so pixels outside the masks identify the
  pair but not the region. Inside the masks, each city draws its cue appearance from its region's family: western
  cues carry horizontal stripes and thin letter-like glyphs in blues, greens and creams; eastern cues carry
  vertical columns of dense square glyphs and ribbed lanterns in reds and golds. Some cues use neutral colours, so
  the pattern, not only the palette, matters.

Scenes are drawn with Pillow at twice the output size and box-downsampled; a mask pixel is set when any part of it
came from a cue, so pixels outside the mask hold no cue colour at all.
"""

import concurrent.futures
import json
import multiprocessing
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from streetlib.classes import SYNTH10
from streetlib.data.loaders import write_street10
from streetlib.paths import atomic_dir

MIN_SIZE = 32
# Recorded in dataset.json; a dataset is reused only when these and the parameters that made it match.
_GENERATOR = "streetlib.data.synth"
_VERSION = 1
# Drawing at twice the size and averaging gives smooth edges while keeping cue colour inside the (max-pooled) mask.
_SUPERSAMPLE = 2
_NEAR_Z = 0.6

# Street styles shared by the k-th city of each region. Only pixels outside the cue masks depend on them.
_STREET_STYLES = (
    {  # brick terraces
        "facades": ((150, 72, 52), (128, 62, 48), (168, 98, 72), (118, 84, 64)),
        "window": (38, 44, 56),
        "window_size": (0.9, 1.7),
        "floor": 3.2,
        "bay": 2.4,
        "heights": (9, 18),
        "road": (62, 62, 66),
        "markings": "dashed-white",
        "trees": 0.3,
        "wires": 0.2,
        "lamp": (30, 30, 30),
    },
    {  # pastel rows
        "facades": ((228, 200, 172), (196, 218, 206), (232, 222, 160), (218, 180, 190)),
        "window": (112, 144, 166),
        "window_size": (1.2, 1.3),
        "floor": 3.0,
        "bay": 2.8,
        "heights": (8, 15),
        "road": (84, 84, 86),
        "markings": "none",
        "trees": 0.6,
        "wires": 0.1,
        "lamp": (40, 70, 50),
    },
    {  # concrete blocks with ribbon windows
        "facades": ((150, 150, 150), (176, 170, 164), (120, 126, 132), (190, 190, 184)),
        "window": (58, 70, 82),
        "window_size": (2.4, 1.0),
        "floor": 3.4,
        "bay": 2.6,
        "heights": (15, 35),
        "road": (72, 72, 78),
        "markings": "double-yellow",
        "trees": 0.2,
        "wires": 0.7,
        "lamp": (90, 90, 95),
    },
    {  # low white stucco
        "facades": ((234, 234, 226), (220, 214, 200), (238, 228, 208), (204, 204, 198)),
        "window": (50, 50, 58),
        "window_size": (0.8, 1.1),
        "floor": 2.9,
        "bay": 2.2,
        "heights": (6, 12),
        "road": (102, 100, 96),
        "markings": "dashed-yellow",
        "trees": 0.4,
        "wires": 0.9,
        "lamp": (60, 60, 60),
    },
    {  # glass towers
        "facades": ((72, 92, 112), (92, 110, 130), (62, 70, 86), (110, 124, 140)),
        "window": (150, 180, 202),
        "window_size": (2.0, 2.2),
        "floor": 3.6,
        "bay": 2.5,
        "heights": (20, 40),
        "road": (56, 56, 62),
        "markings": "dashed-white",
        "trees": 0.2,
        "wires": 0.3,
        "lamp": (120, 120, 125),
    },
)

_WEST = {
    "navy": (28, 52, 120),
    "forest": (26, 88, 58),
    "cream": (232, 222, 196),
    "charcoal": (40, 40, 46),
    "white": (240, 240, 236),
    "teal": (20, 110, 120),
    "burgundy": (110, 30, 45),
    "brass": (196, 168, 96),
}
_EAST = {
    "red": (196, 32, 36),
    "gold": (226, 172, 44),
    "black": (22, 20, 20),
    "paper": (244, 238, 222),
    "orange": (228, 108, 28),
    "crimson": (150, 20, 40),
    "jade": (40, 140, 90),
}
_OWN_STYLE_PROB = 0.65
_NEUTRAL = ((200, 200, 196), (60, 60, 62), (128, 110, 92), (235, 235, 230), (100, 104, 110))

# Cue styles: (background colours, glyph colours, pattern weights) per city, within its region's family.
_WEST_PATTERNS = ("stripes", "letters", "roundel")
_EAST_PATTERNS = ("columns", "lantern", "seal")
_CUE_STYLES = (
    (  # western cities
        (("navy", "white"), ("white", "brass"), (0.3, 0.5, 0.2)),
        (("forest", "cream"), ("cream", "charcoal"), (0.5, 0.3, 0.2)),
        (("teal", "cream"), ("white", "charcoal"), (0.2, 0.6, 0.2)),
        (("white", "teal"), ("navy", "teal"), (0.3, 0.3, 0.4)),
        (("burgundy", "cream"), ("cream", "brass"), (0.4, 0.4, 0.2)),
    ),
    (  # eastern cities
        (("red", "gold"), ("gold", "black"), (0.5, 0.3, 0.2)),
        (("crimson", "gold"), ("gold", "black"), (0.3, 0.3, 0.4)),
        (("paper", "red"), ("red", "black"), (0.6, 0.2, 0.2)),
        (("orange", "black"), ("black", "paper"), (0.3, 0.5, 0.2)),
        (("jade", "crimson"), ("paper", "gold"), (0.4, 0.4, 0.2)),
    ),
)
_NEUTRAL_CUE_PROB = 0.1

_SKIES = (((92, 140, 210), (192, 212, 232)), ((150, 154, 166), (204, 204, 208)), ((64, 72, 124), (232, 164, 122)))
_CLOTHES = ((196, 40, 40), (30, 60, 140), (230, 200, 60), (40, 40, 40), (230, 230, 230), (60, 120, 70), (140, 90, 50))
_SKIN = ((236, 200, 170), (200, 150, 110), (140, 96, 64), (90, 60, 40))
_CARS = ((200, 30, 30), (230, 230, 230), (30, 30, 34), (40, 70, 150), (150, 150, 155), (220, 180, 40))


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Invalid `{name}`. Expected an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _twin_layout(spec):
    """(region index, twin index) of each class; the generator needs 2 regions with equally many classes."""
    sizes = [len(spec.classes_in(r)) for r in spec.region_names]
    if len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] > len(_STREET_STYLES):
        raise ValueError(
            f"Invalid `spec`. The synthetic generator needs 2 regions with the same number of classes (at most "
            f"{len(_STREET_STYLES)} each). Received: regions with {sizes} classes."
        )
    layout = []
    for cls, region in zip(spec.classes, spec.regions, strict=True):
        layout.append((spec.region_names.index(region), spec.classes_in(region).index(cls)))
    return layout


@dataclass
class _Camera:
    focal: float
    cx: float
    horizon: float
    height: float

    def project(self, x, y, z):
        """Screen (column, row) of world point x (right), y (up), z (ahead) in metres."""
        return self.cx + self.focal * x / z, self.horizon + self.focal * (self.height - y) / z


class _Canvas:
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


def _clip_channel(value):
    """A colour channel clipped to [0, 255], as an int (truncated). min/max rather than np.clip: np.clip on one
    scalar costs microseconds, and these run about a million times per 3,000 images, for the same result."""
    return int(min(max(value, 0), 255))


def _jitter(rng, colour, amount):
    return tuple(_clip_channel(c + rng.integers(-amount, amount + 1)) for c in colour)


def _scale(colour, factor):
    return tuple(_clip_channel(c * factor) for c in colour)


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _street_style(rng, twin):
    """The street style of one picture: each trait is the twin pair's own most of the time, another pair's
    otherwise, so cities overlap as real ones do."""
    own = _STREET_STYLES[twin]
    return {key: own[key] if rng.random() < _OWN_STYLE_PROB else _pick(rng, _STREET_STYLES)[key] for key in own}


def _sky(rng, size, horizon):
    top, bottom = (np.array(_jitter(rng, c, 18), np.float32) for c in _pick(rng, _SKIES))
    t = np.clip(np.arange(size, dtype=np.float32) / max(horizon, 1.0), 0.0, 1.0)[:, None]
    column = top * (1.0 - t) + bottom * t
    return np.broadcast_to(column[:, None, :], (size, size, 3)).astype(np.uint8)


def _street(canvas, cam, rng, style, geometry, shade):
    """Ground, road, markings, the far skyline and both rows of facades with their windows."""
    size = canvas.size
    road_half, walls = geometry["road_half"], geometry["walls"]
    far = geometry["far"]
    canvas.rectangle((0, cam.horizon, size, size), _jitter(rng, (150, 146, 140), 14))
    road = [
        cam.project(-road_half, 0, _NEAR_Z),
        cam.project(road_half, 0, _NEAR_Z),
        cam.project(road_half, 0, far),
        cam.project(-road_half, 0, far),
    ]
    canvas.polygon(road, _jitter(rng, style["road"], 10))
    for side in (-1, 1):
        curb = [
            cam.project(side * road_half, 0, _NEAR_Z),
            cam.project(side * (road_half + 0.25), 0, _NEAR_Z),
            cam.project(side * (road_half + 0.25), 0, far),
            cam.project(side * road_half, 0, far),
        ]
        canvas.polygon(curb, (190, 188, 182))
    _markings(canvas, cam, style["markings"], far)
    # The far end of the street: a hazy skyline across the vanishing point.
    for x0 in np.arange(-40.0, 40.0, rng.uniform(5, 12)):
        top = rng.uniform(4, 30)
        (a, b), (c, d) = cam.project(x0, top, far), cam.project(x0 + rng.uniform(4, 12), 0, far)
        canvas.rectangle((a, b, c, d), _jitter(rng, (150, 160, 172), 16))
    for side in (-1, 1):
        z = _NEAR_Z
        while z < far:
            length = rng.uniform(6, 16)
            _building(canvas, cam, rng, style, side * walls[side > 0], z, min(z + length, far), shade[side > 0])
            z += length


def _markings(canvas, cam, kind, far):
    """Centre-line markings: 'dashed-white', 'dashed-yellow', 'double-yellow' or 'none'."""
    if kind == "none":
        return
    colour = (236, 236, 230) if kind.endswith("white") else (230, 190, 40)
    if kind == "double-yellow":
        spans, offsets = [(1.0, far)], (-0.18, 0.06)
    else:
        spans, offsets = [(z, z + 3.0) for z in np.arange(1.0, far - 3.0, 6.0)], (-0.06,)
    for z0, z1 in spans:
        for x in offsets:
            canvas.polygon(
                [
                    cam.project(x, 0, z0),
                    cam.project(x + 0.12, 0, z0),
                    cam.project(x + 0.12, 0, z1),
                    cam.project(x, 0, z1),
                ],
                colour,
            )


def _building(canvas, cam, rng, style, wall_x, z0, z1, shade):
    facades = style["facades"] if rng.random() < _OWN_STYLE_PROB else _pick(rng, _STREET_STYLES)["facades"]
    colour = _pick(rng, facades)
    colour = _scale(_jitter(rng, colour, 14), shade)
    height = rng.uniform(*style["heights"])
    canvas.polygon(
        [
            cam.project(wall_x, 0, z0),
            cam.project(wall_x, 0, z1),
            cam.project(wall_x, height, z1),
            cam.project(wall_x, height, z0),
        ],
        colour,
    )
    canvas.polygon(
        [
            cam.project(wall_x, 0, z0),
            cam.project(wall_x, 0, z1),
            cam.project(wall_x, 2.6, z1),
            cam.project(wall_x, 2.6, z0),
        ],
        _scale(colour, 0.55),
    )
    win_w, win_h = style["window_size"]
    window = _scale(_jitter(rng, style["window"], 12), shade)
    lit = _scale(window, 1.6)
    floors = np.arange(3.0 + 0.6, height - win_h, style["floor"])
    bays = np.arange(z0 + 0.5, z1 - win_w, style["bay"] + win_w * 0.5)
    if len(floors) == 0 or len(bays) == 0:
        return
    for za in bays:
        zb = za + win_w
        # Windows under about a pixel tall are left out: far facades read as plain colour, as in photos.
        if cam.focal * win_h / zb < 1.5:
            break
        for y in floors:
            quad = [
                cam.project(wall_x, y, za),
                cam.project(wall_x, y, zb),
                cam.project(wall_x, y + win_h, zb),
                cam.project(wall_x, y + win_h, za),
            ]
            if max(q[1] for q in quad) < 0:
                break
            canvas.polygon(quad, lit if rng.random() < 0.1 else window)


def _cue_layout(rng, cam, geometry, canvas_size):
    """Where the cue objects are and their outlines: drawn the same way whatever the class."""
    cues = []
    for _ in range(rng.integers(4, 9)):
        side = 1 if rng.random() < 0.5 else -1
        kind = _pick(rng, ("board", "blade", "disc"))
        if kind == "board":
            width, height = rng.uniform(2.4, 4.4), rng.uniform(1.0, 1.8)
        elif kind == "blade":
            width, height = rng.uniform(1.0, 1.8), rng.uniform(2.4, 4.4)
        else:
            width = height = rng.uniform(1.2, 2.2)
        x = side * (geometry["walls"][side > 0] - rng.uniform(0.2, 0.8) - width / 2)
        # Nearer than this the sign would hang outside the frame.
        room = cam.cx if side < 0 else canvas_size - cam.cx
        nearest = max(2.0, cam.focal * abs(x) / room)
        z = nearest * float(np.exp(rng.uniform(0.0, 0.7)))
        cues.append({"kind": kind, "x": x, "y": rng.uniform(3.0, 6.0), "z": z, "width": width, "height": height})
    return cues


def _cue_style(rng, region, twin, *, labelled):
    """Colours and pattern of one cue object, from its city's style within the region family (any city's style
    when not ``labelled``)."""
    if not labelled:
        region, twin = rng.integers(2), rng.integers(len(_CUE_STYLES[0]))
    bgs, fgs, weights = _CUE_STYLES[region][twin]
    family = _WEST if region == 0 else _EAST
    patterns = _WEST_PATTERNS if region == 0 else _EAST_PATTERNS
    pattern = patterns[rng.choice(len(patterns), p=weights)]
    if rng.random() < _NEUTRAL_CUE_PROB:
        bg, fg = (_NEUTRAL[i] for i in rng.choice(len(_NEUTRAL), 2, replace=False))
    else:
        bg_name = _pick(rng, bgs)
        bg, fg = family[bg_name], family[_pick(rng, [name for name in fgs if name != bg_name])]
    return {"pattern": pattern, "bg": _jitter(rng, bg, 20), "fg": _jitter(rng, fg, 20)}


def _cue_tile(rng, width, height, kind, style):
    """RGB tile and outline (L, 255 inside) of one cue object, ``width`` x ``height`` pixels."""
    outline = Image.new("L", (width, height), 0)
    if kind == "disc":
        ImageDraw.Draw(outline).ellipse((0, 0, width - 1, height - 1), fill=255)
    else:
        outline.paste(255, (0, 0, width, height))
    tile = Image.new("RGB", (width, height), style["bg"])
    draw = ImageDraw.Draw(tile)
    _PATTERNS[style["pattern"]](draw, rng, width, height, style["fg"], style["bg"])
    return tile, outline


def _stripes(draw, rng, w, h, fg, bg):
    bands = int(rng.integers(3, 8))
    for i in range(0, bands, 2):
        y0 = h * i / bands
        draw.rectangle((0, y0, w, max(y0, h * (i + 1) / bands - 1)), fill=fg)


def _letters(draw, rng, w, h, fg, bg):
    """A frame and a line of thin latin-like glyphs, stacked when the sign is tall."""
    draw.rectangle((0, 0, w - 1, h - 1), outline=fg, width=max(1, min(w, h) // 12))
    tall = h > w
    count = int(rng.integers(3, 8))
    long_side, short_side = (h, w) if tall else (w, h)
    cell = long_side * 0.84 / count
    glyph_w, glyph_h = (cell * 0.7, min(short_side * 0.55, cell * 1.5)) if not tall else (short_side * 0.5, cell * 0.75)
    stroke = max(1, int(round(min(glyph_w, glyph_h) / 5)))
    for i in range(count):
        start = long_side * 0.08 + i * cell
        x0, y0 = (start, (h - glyph_h) / 2) if not tall else ((w - glyph_w) / 2, start)
        strokes = rng.choice(6, int(rng.integers(2, 4)), replace=False)
        for s in strokes:
            segment = ((0, 0, 0, 1), (1, 0, 1, 1), (0, 0, 1, 0), (0, 0.5, 1, 0.5), (0, 1, 1, 1), (0, 1, 1, 0))[s]
            draw.line(
                (
                    x0 + segment[0] * glyph_w,
                    y0 + segment[1] * glyph_h,
                    x0 + segment[2] * glyph_w,
                    y0 + segment[3] * glyph_h,
                ),
                fill=fg,
                width=stroke,
            )


def _roundel(draw, rng, w, h, fg, bg):
    ring = max(1, min(w, h) // 6)
    draw.ellipse((w * 0.12, h * 0.12, w * 0.88, h * 0.88), outline=fg, width=ring)
    draw.rectangle((0, h * 0.42, w, h * 0.58), fill=fg)


def _square_glyph(draw, rng, x0, y0, cell, fg):
    """A dense, boxy glyph: a few horizontal and vertical strokes inside a square cell."""
    stroke = max(1, int(round(cell / 7)))
    for _ in range(int(rng.integers(3, 6))):
        t = rng.uniform(0.1, 0.9)
        if rng.random() < 0.5:
            draw.line((x0 + cell * 0.1, y0 + t * cell, x0 + cell * 0.9, y0 + t * cell), fill=fg, width=stroke)
        else:
            draw.line((x0 + t * cell, y0 + cell * 0.1, x0 + t * cell, y0 + cell * 0.9), fill=fg, width=stroke)


def _columns(draw, rng, w, h, fg, bg):
    """Vertical columns of square glyphs; on a wide board, one tight row."""
    if h >= w:
        cols = 1 if w < h / 1.5 else 2
        cell = w / (cols + 0.4)
        for c in range(cols):
            for r in range(int((h - cell * 0.3) // (cell * 1.05))):
                _square_glyph(draw, rng, cell * 0.2 + c * cell, cell * 0.2 + r * cell * 1.05, cell, fg)
    else:
        cell = h * 0.8
        for r in range(int((w - cell * 0.2) // (cell * 1.02))):
            _square_glyph(draw, rng, cell * 0.1 + r * cell * 1.02, h * 0.1, cell, fg)


def _lantern(draw, rng, w, h, fg, bg):
    """Vertical ribs between dark top and bottom bands, a glyph in the middle."""
    for x in np.arange(w / 6, w, max(2.0, w / 6)):
        draw.line((x, 0, x, h), fill=_scale(bg, 0.6), width=max(1, w // 24))
    band = max(1, h // 7)
    draw.rectangle((0, 0, w, band), fill=fg)
    draw.rectangle((0, h - band, w, h), fill=fg)
    cell = min(w, h) * 0.45
    _square_glyph(draw, rng, (w - cell) / 2, (h - cell) / 2, cell, fg)


def _seal(draw, rng, w, h, fg, bg):
    """One glyph inside a square frame, like a seal stamp."""
    cell = min(w, h) * 0.7
    x0, y0 = (w - cell) / 2, (h - cell) / 2
    draw.rectangle((x0, y0, x0 + cell, y0 + cell), outline=fg, width=max(1, int(cell / 8)))
    _square_glyph(draw, rng, x0 + cell * 0.15, y0 + cell * 0.15, cell * 0.7, fg)


_PATTERNS = {
    "stripes": _stripes,
    "letters": _letters,
    "roundel": _roundel,
    "columns": _columns,
    "lantern": _lantern,
    "seal": _seal,
}


def _draw_cue(canvas, cam, rng, cue, style):
    """Paste one cue object; ``rng`` draws its glyphs, so it must be the region-dependent stream."""
    (x0, y0), (x1, y1) = (
        cam.project(cue["x"] - cue["width"] / 2, cue["y"] + cue["height"] / 2, cue["z"]),
        cam.project(cue["x"] + cue["width"] / 2, cue["y"] - cue["height"] / 2, cue["z"]),
    )
    corner = (int(round(x0)), int(round(y0)))
    width, height = int(round(x1)) - corner[0], int(round(y1)) - corner[1]
    if width < 2 or height < 2:
        return
    tile, outline = _cue_tile(rng, width, height, cue["kind"], style)
    canvas.paste_cue(tile, outline, corner)


def _lamp(canvas, cam, x, z, colour):
    pole = [cam.project(x - 0.08, 6.0, z), cam.project(x + 0.08, 0, z)]
    canvas.rectangle((*pole[0], *pole[1]), colour)
    arm_end = cam.project(x - np.sign(x) * 1.2, 6.0, z)
    canvas.line([cam.project(x, 6.0, z), arm_end], colour, max(1, int(cam.focal * 0.08 / z)))
    r = cam.focal * 0.25 / z
    canvas.ellipse((arm_end[0] - r, arm_end[1] - r * 0.5, arm_end[0] + r, arm_end[1] + r * 0.5), (250, 240, 200))


def _tree(canvas, cam, rng, x, z):
    (a, b), (c, d) = cam.project(x - 0.15, 3.5, z), cam.project(x + 0.15, 0, z)
    canvas.rectangle((a, b, c, d), _jitter(rng, (90, 64, 40), 12))
    radius = rng.uniform(1.4, 2.8)
    for _ in range(3):
        cx, cy = cam.project(x + rng.uniform(-0.6, 0.6), 3.5 + radius * rng.uniform(0.4, 1.0), z)
        r = cam.focal * radius * rng.uniform(0.6, 1.0) / z
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), _jitter(rng, (58, 112, 52), 24))


def _pedestrian(canvas, cam, rng, x, z):
    height = rng.uniform(1.5, 1.9)
    (a, b), (c, d) = cam.project(x - 0.2, height * 0.48, z), cam.project(x + 0.2, 0, z)
    canvas.rectangle((a, b, c, d), _jitter(rng, (50, 50, 60), 20))
    (a, b), (c, d) = cam.project(x - 0.25, height * 0.85, z), cam.project(x + 0.25, height * 0.48, z)
    canvas.rectangle((a, b, c, d), _jitter(rng, _pick(rng, _CLOTHES), 30))
    cx, cy = cam.project(x, height * 0.93, z)
    r = cam.focal * 0.11 / z
    canvas.ellipse((cx - r, cy - r, cx + r, cy + r), _pick(rng, _SKIN))


def _traffic_sign(canvas, cam, rng, x, z):
    (a, b), (c, d) = cam.project(x - 0.04, 2.6, z), cam.project(x + 0.04, 0, z)
    canvas.rectangle((a, b, c, d), (110, 110, 115))
    cx, cy = cam.project(x, 2.6, z)
    r = cam.focal * 0.35 / z
    if rng.random() < 0.5:
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), (200, 30, 30))
        canvas.ellipse((cx - r * 0.7, cy - r * 0.7, cx + r * 0.7, cy + r * 0.7), (240, 240, 240))
    else:
        canvas.rectangle((cx - r, cy - r, cx + r, cy + r), (30, 80, 170))
        canvas.rectangle((cx - r * 0.2, cy - r * 0.6, cx + r * 0.2, cy + r * 0.6), (240, 240, 240))


def _car(canvas, cam, rng, x, z):
    colour = _jitter(rng, _pick(rng, _CARS), 20)
    (a, b), (c, d) = cam.project(x - 0.9, 1.0, z), cam.project(x + 0.9, 0.2, z)
    canvas.rectangle((a, b, c, d), colour)
    (a, b), (c, d) = cam.project(x - 0.7, 1.45, z), cam.project(x + 0.7, 1.0, z)
    canvas.rectangle((a, b, c, d), _scale(colour, 0.85))
    (a, b), (c, d) = cam.project(x - 0.55, 1.38, z), cam.project(x + 0.55, 1.05, z)
    canvas.rectangle((a, b, c, d), (40, 50, 60))
    for wheel in (-0.65, 0.65):
        (a, b), (c, d) = cam.project(x + wheel - 0.18, 0.35, z), cam.project(x + wheel + 0.18, 0, z)
        canvas.rectangle((a, b, c, d), (20, 20, 20))


def _wires(canvas, cam, rng, geometry):
    width = max(1, canvas.size // 96)
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(-geometry["walls"][0], geometry["walls"][1]), rng.uniform(6.5, 9.5)
        zs = np.linspace(_NEAR_Z + 0.4, geometry["far"], 24)
        points = [cam.project(x, y - 0.4 * np.sin(np.pi * (z % 20) / 20), z) for z in zs]
        canvas.line(points, (28, 28, 30), width)
    for _ in range(int(rng.integers(0, 3))):
        z, y = rng.uniform(3, 15), rng.uniform(6.5, 9.5)
        xs = np.linspace(-geometry["walls"][0], geometry["walls"][1], 12)
        sag = 0.8 * (1 - (2 * (xs - xs.mean()) / (xs[-1] - xs[0])) ** 2)
        canvas.line([cam.project(xi, y - s, z) for xi, s in zip(xs, sag, strict=True)], (28, 28, 30), width)


def _objects(rng, style, geometry):
    """Street furniture and passers-by as (depth, kind, x) so they can be drawn far to near with the cues."""
    road_half, walls = geometry["road_half"], geometry["walls"]
    items = []
    start, spacing = rng.uniform(2, 12), rng.uniform(12, 24)
    for z in np.arange(start, geometry["far"] * 0.6, spacing):
        for side in (-1, 1):
            items.append((z + rng.uniform(-1, 1), "lamp", side * (road_half + 0.5)))
    for z in np.exp(rng.uniform(0.8, 3.7, rng.binomial(10, style["trees"]))):
        side = 1 if rng.random() < 0.5 else -1
        items.append((z, "tree", side * (road_half + (walls[side > 0] - road_half) * 0.45)))
    for z in np.exp(rng.uniform(1.0, 3.4, rng.poisson(3))):
        side = 1 if rng.random() < 0.5 else -1
        items.append((z, "pedestrian", side * rng.uniform(road_half + 0.5, walls[side > 0] - 0.3)))
    for z in rng.uniform(3, 25, rng.integers(0, 3)):
        side = 1 if rng.random() < 0.5 else -1
        items.append((z, "sign", side * (road_half + 0.6)))
    for z in np.exp(rng.uniform(1.2, 3.7, rng.integers(0, 5))):
        side = 1 if rng.random() < 0.5 else -1
        items.append((z, "car", side * (road_half - 1.1)))
    return items


def _finish(rng, image, mask, size):
    """Downsample, then light, colour-cast and add noise to the whole picture (cue and non-cue pixels alike)."""
    s = _SUPERSAMPLE
    pixels = np.asarray(image, np.float32).reshape(size, s, size, s, 3).mean(axis=(1, 3))
    cue = np.asarray(mask, np.uint8).reshape(size, s, size, s).max(axis=(1, 3))
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    light = rng.uniform(0.72, 1.18) * (1.0 + rng.uniform(-0.15, 0.15) * ramp)[None, :, None]
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    noise = rng.normal(0.0, rng.uniform(2.0, 9.0), (size, size, 3)).astype(np.float32)
    out = np.clip(pixels * light * cast + noise, 0, 255)
    return np.rint(out).astype(np.uint8), cue


def render_scene(rng, *, size, city_index, spec=SYNTH10, cues=True):
    """Draw one street scene of class ``city_index``.

    The scene (layout, street style of the city's twin pair, cue positions and outlines, lighting, noise) comes
    from one random stream and the cue appearance from a second, both seeded from ``rng``; only the second
    depends on the region. So a western and an eastern twin city rendered from equal ``rng`` states give the same
    mask and the same pixels outside it.

    Args:
        rng: `np.random.Generator`, consumed (two draws) to seed the scene and the cue appearance.
        size: int >= 32, output height and width in pixels.
        city_index: int, the class index in ``spec.classes``.
        spec: `ClassSpec` with 2 regions of equally many classes (at most 5 each). Default `SYNTH10`.
        cues: bool. If False, each cue object takes the style of a random city of either region, so it carries no
            label: a control where region cannot be learned. Default True.

    Returns:
        (image, mask): uint8 `(size, size, 3)` RGB, and uint8 `(size, size)` in {0, 1}, 1 where a pixel shows a
        cue object.
    """
    size = _check_int(size, "size", MIN_SIZE)
    layout = _twin_layout(spec)
    if (
        isinstance(city_index, bool)
        or not isinstance(city_index, numbers.Integral)
        or not (0 <= city_index < len(layout))
    ):
        raise ValueError(
            f"Invalid `city_index`. Expected an int in [0, {len(layout) - 1}]. Received: city_index={city_index!r}"
        )
    region, twin = layout[city_index]
    scene_rng = np.random.default_rng(rng.integers(2**63))
    cue_rng = np.random.default_rng(rng.integers(2**63))

    style = _street_style(scene_rng, twin)
    canvas_size = size * _SUPERSAMPLE
    cam = _Camera(
        focal=canvas_size * scene_rng.uniform(0.45, 0.65),
        cx=canvas_size * (0.5 + scene_rng.uniform(-0.12, 0.12)),
        horizon=canvas_size * (0.52 + scene_rng.uniform(-0.07, 0.07)),
        height=scene_rng.uniform(1.4, 1.9),
    )
    road_half = scene_rng.uniform(2.8, 5.0)
    geometry = {
        "road_half": road_half,
        "walls": (road_half + scene_rng.uniform(1.5, 3.0), road_half + scene_rng.uniform(1.5, 3.0)),
        "far": scene_rng.uniform(60, 140),
    }
    shade = (1.0, scene_rng.uniform(0.6, 0.9)) if scene_rng.random() < 0.5 else (scene_rng.uniform(0.6, 0.9), 1.0)
    canvas = _Canvas(_sky(scene_rng, canvas_size, cam.horizon))
    _street(canvas, cam, scene_rng, style, geometry, shade)

    items = [(cue["z"], "cue", cue) for cue in _cue_layout(scene_rng, cam, geometry, canvas_size)]
    items += _objects(scene_rng, style, geometry)
    # Far to near, so nearer objects cover farther ones (and clear the cue mask where they do).
    for z, kind, what in sorted(items, key=lambda item: -item[0]):
        if kind == "cue":
            _draw_cue(canvas, cam, cue_rng, what, _cue_style(cue_rng, region, twin, labelled=cues))
        elif kind == "lamp":
            _lamp(canvas, cam, what, z, style["lamp"])
        elif kind == "tree":
            _tree(canvas, cam, scene_rng, what, z)
        elif kind == "pedestrian":
            _pedestrian(canvas, cam, scene_rng, what, z)
        elif kind == "sign":
            _traffic_sign(canvas, cam, scene_rng, what, z)
        else:
            _car(canvas, cam, scene_rng, what, z)
    if scene_rng.random() < style["wires"]:
        _wires(canvas, cam, scene_rng, geometry)
    return _finish(scene_rng, canvas.image, canvas.mask, size)


def cue_fraction(masks):
    """Fraction of each image covered by cue objects.

    Args:
        masks: uint8 or bool `(n, H, W)`, nonzero on cue pixels.

    Returns:
        float64 `(n,)` in [0, 1].
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"Invalid `masks`. Expected an array of shape (n, H, W). Received: shape={masks.shape}")
    return (masks.reshape(len(masks), -1) != 0).mean(axis=1)


# Images drawn per task in a worker process: enough that sending the arrays back costs little next to drawing them
# (about 8 ms an image at 64 px), few enough that the progress bar moves and the workers finish together.
_CHUNK = 25
# A worker process takes about a second to start (a fresh interpreter importing numpy and Pillow), so each one needs
# this many images to pay for itself; smaller datasets get fewer workers, down to none (drawn in this process).
_IMAGES_PER_WORKER = 150
_MAX_DEFAULT_WORKERS = 4


def _check_workers(workers):
    """The number of worker processes asked for: ``workers`` itself, or for None the CPUs this process may use, at
    most `_MAX_DEFAULT_WORKERS`."""
    if workers is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(usable or 1, _MAX_DEFAULT_WORKERS))
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"Invalid `workers`. Expected None or an int >= 1. Received: workers={workers!r}")
    return int(workers)


def _render_chunk(start, stop, *, per_class, size, seed, spec, cues):
    """Images ``start`` to ``stop - 1`` of the dataset in class-major order (image ``k`` is image
    ``k % per_class`` of class ``k // per_class``), each seeded from ``(seed, class, i)``.

    Returns:
        (images, masks): uint8 `(stop - start, size, size, 3)` and uint8 `(stop - start, size, size)`.
    """
    images = np.empty((stop - start, size, size, 3), np.uint8)
    masks = np.empty((stop - start, size, size), np.uint8)
    for k in range(start, stop):
        idx, i = divmod(k, per_class)
        rng = np.random.default_rng(np.random.SeedSequence([seed, idx, i]))
        images[k - start], masks[k - start] = render_scene(rng, size=size, city_index=idx, spec=spec, cues=cues)
    return images, masks


def _rendered(total, workers, **scene):
    """Draw images 0 to ``total - 1`` (see `_render_chunk`) in chunks of `_CHUNK`, on up to ``workers`` processes.

    Yields:
        (start, images, masks) per chunk, in the order chunks finish.
    """
    chunks = [(start, min(start + _CHUNK, total)) for start in range(0, total, _CHUNK)]
    workers = min(workers, -(-total // _IMAGES_PER_WORKER), len(chunks))
    if workers <= 1:
        for start, stop in chunks:
            yield start, *_render_chunk(start, stop, **scene)
        return
    # Spawned, not forked: the caller (a notebook kernel) may already run TensorFlow's threads, and a fork of a
    # process with running threads can deadlock in the child.
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_render_chunk, start, stop, **scene): start for start, stop in chunks}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], *future.result()
    finally:
        # After an error (or an interrupt), chunks not yet started are dropped rather than drawn for nothing.
        pool.shutdown(cancel_futures=True)


def make_synthetic(*, per_class=100, size=64, seed=0, spec=SYNTH10, cues=True, progress=False, workers=None):
    """Generate the synthetic street dataset in memory.

    Image ``i`` of class ``c`` is seeded from ``(seed, c, i)``, so the same seed gives byte-identical arrays and a
    larger ``per_class`` only appends images. The same holds whatever ``workers`` is: each image depends only on its
    own seed, never on which process drew it or when.

    Args:
        per_class: int >= 1, images per class. Default 100.
        size: int >= 32, image height and width in pixels. Default 64.
        seed: int >= 0. Default 0.
        spec: `ClassSpec` with 2 regions of equally many classes (at most 5 each). Default `SYNTH10`.
        cues: bool, False for the control where cue objects carry no label (see `render_scene`). Default True.
        progress: bool, show a progress bar. Default False.
        workers: None or int >= 1, processes drawing images in parallel (spawned, each takes about a second to
            start). Small datasets use fewer, one per 150 images, and 1 draws in this process. Default None: the
            CPUs available, at most 4.

    Returns:
        (images_by_class, masks_by_class): dicts class name -> uint8 `(per_class, size, size, 3)` and
        class name -> uint8 `(per_class, size, size)` in {0, 1}, in ``spec.classes`` order.
    """
    per_class = _check_int(per_class, "per_class", 1)
    size = _check_int(size, "size", MIN_SIZE)
    seed = _check_int(seed, "seed", 0)
    workers = _check_workers(workers)
    _twin_layout(spec)
    total = per_class * spec.num_classes
    images = np.empty((total, size, size, 3), np.uint8)
    masks = np.empty((total, size, size), np.uint8)
    scene = {"per_class": per_class, "size": size, "seed": seed, "spec": spec, "cues": cues}
    with tqdm(total=total, desc="synthetic streets", unit="img", disable=not progress) as bar:
        for start, chunk_images, chunk_masks in _rendered(total, workers, **scene):
            images[start : start + len(chunk_images)] = chunk_images
            masks[start : start + len(chunk_masks)] = chunk_masks
            bar.update(len(chunk_images))
    shape = (spec.num_classes, per_class)
    images, masks = images.reshape(*shape, size, size, 3), masks.reshape(*shape, size, size)
    return dict(zip(spec.classes, images, strict=True)), dict(zip(spec.classes, masks, strict=True))


def _recipe(per_class, size, seed):
    """What ``dataset.json`` records of how a synthetic dataset was made, once each parameter is checked."""
    return {
        "generator": _GENERATOR,
        "version": _VERSION,
        "per_class": _check_int(per_class, "per_class", 1),
        "size": _check_int(size, "size", MIN_SIZE),
        "seed": _check_int(seed, "seed", 0),
    }


def _describe(values, keys=("per_class", "size", "seed")):
    return ", ".join(f"{key}={values.get(key)!r}" for key in keys)


def generate(out_dir, *, per_class=100, size=64, seed=0, overwrite=False, progress=True, workers=None):
    """Generate the synthetic Street10-format dataset (`SYNTH10` classes, with cue masks) and write it.

    The files are written into a temporary folder beside ``out_dir`` and moved into place at the end, so a failure
    (a full disk, Ctrl-C) leaves no partial dataset. ``dataset.json`` records the parameters (see `ensure`).

    Args:
        out_dir: str or Path, the directory to write; its name becomes the dataset name.
        per_class: int >= 1, images per class. Default 100.
        size: int >= 32, image height and width in pixels. Default 64.
        seed: int >= 0. Default 0.
        overwrite: bool. If False (default), refuse to write over an existing dataset.
        progress: bool, show a progress bar. Default True.
        workers: None or int >= 1, processes drawing images (see `make_synthetic`); the dataset is the same whatever
            it is. Default None: the CPUs available, at most 4.

    Returns:
        Path of ``out_dir``, loadable with `streetlib.data.loaders.load_street10`.

    Raises:
        ValueError: an invalid parameter, before anything is drawn.
        FileExistsError: ``out_dir`` holds a dataset and ``overwrite`` is False.
        OSError: writing failed (the message names ``out_dir``); nothing was left there.
    """
    out_dir = Path(out_dir)
    recipe = _recipe(per_class, size, seed)
    # Checked before drawing too, so a taken directory fails at once rather than after the whole dataset is made.
    if not overwrite and any(out_dir.glob("*.npy")):
        raise FileExistsError(f"{out_dir} already holds a dataset. Choose another --out or pass overwrite=True.")
    images, masks = make_synthetic(per_class=per_class, size=size, seed=seed, progress=progress, workers=workers)
    meta = {
        "name": out_dir.name,
        "synthetic": True,
        **recipe,
        "mean_cue_fraction": float(cue_fraction(np.concatenate(list(masks.values()))).mean()),
    }
    with atomic_dir(out_dir) as tmp:
        write_street10(tmp, images, spec=SYNTH10, masks_by_class=masks, meta=meta)
    return out_dir


def ensure(out_dir, *, per_class=100, size=64, seed=0, overwrite=False, progress=True, workers=None, report=print):
    """The synthetic dataset in ``out_dir`` made with these parameters: reused when it is there, generated when the
    folder holds no dataset.

    The one rule by which notebook 00 and ``streetlib data synth --if-missing`` reuse data, so that a changed
    parameter never silently reads images made with the old one.

    Args:
        out_dir: str or Path.
        per_class, size, seed: as in `generate`; checked before anything is read or drawn.
        overwrite: bool. If True, a dataset made otherwise (or an incomplete one) is replaced. Default False.
        progress, workers: as in `generate`.
        report: callable taking one line of text, saying whether the dataset was reused or written. Default print.

    Returns:
        Path of ``out_dir``.

    Raises:
        ValueError: an invalid ``per_class``, ``size`` or ``seed``.
        FileExistsError: ``out_dir`` holds a dataset made with other parameters, one this generator did not make,
            or class files without ``dataset.json`` (an incomplete dataset), and ``overwrite`` is False. The message
            says which parameters differ.
    """
    out_dir = Path(out_dir)
    recipe = _recipe(per_class, size, seed)
    problem = _how_it_differs(out_dir, recipe)
    if problem is None and (out_dir / "dataset.json").is_file():
        report(f"Reusing the synthetic dataset in {out_dir} ({_describe(recipe)})")
        return out_dir
    if problem is not None and not overwrite:
        raise FileExistsError(
            f"{out_dir} {problem}. Choose another data_dir (--out), or pass overwrite=True (--overwrite) to replace it."
        )
    generate(
        out_dir, per_class=per_class, size=size, seed=seed, overwrite=overwrite, progress=progress, workers=workers
    )
    report(f"Wrote the synthetic dataset to {out_dir} ({_describe(recipe)})")
    return out_dir


def _how_it_differs(out_dir, recipe):
    """None if ``out_dir`` holds no dataset or one made by ``recipe``; else how it differs, as a phrase."""
    meta_path = out_dir / "dataset.json"
    if not meta_path.is_file():
        return "holds class files but no dataset.json: an incomplete dataset" if any(out_dir.glob("*.npy")) else None
    try:
        made = json.loads(meta_path.read_text())
    except ValueError as err:
        return f"holds a dataset whose dataset.json is not valid JSON ({err})"
    if not isinstance(made, dict) or made.get("generator") != _GENERATOR:
        return f"holds a dataset not made by {_GENERATOR}"
    differ = [key for key in ("version", "per_class", "size", "seed") if made.get(key) != recipe[key]]
    if differ:
        return f"holds a dataset made with {_describe(made, differ)}, not {_describe(recipe, differ)}"
    return None
