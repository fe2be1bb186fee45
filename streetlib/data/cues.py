"""The cue objects of a synthetic street scene: shop boards, blade signs and round lanterns facing the camera, the
only things that carry the region, and whose pixels make the cue mask.

Where they are and their outlines (`cue_layout`) come from the scene's random stream, which does not depend on the
region. Their appearance (`cue_style`, then the pattern `draw_cue` paints) comes from a second stream: each city draws
from its region's family. Western cues carry horizontal stripes and thin letter-like glyphs in blues, greens and
creams; eastern cues carry vertical columns of dense square glyphs and ribbed lanterns in reds and golds. Some cues
use neutral colours, so the pattern, not only the palette, matters.

The layout task (`draw_pair`) keeps the places and outlines and changes what a cue object is: a pair of panels, one
of horizontal bands and one of vertical bars, stacked with a strip of wall between them, in colours that depend on
the city's twin pair only. Both regions show the same panels in the same colours; which panel is on top is the
region. The strip is wide enough that no 6-pixel window (what a feature of VGG16's ``block1_pool`` sees) covers both
panels, so every small patch of an image is as likely in either region and the region is only in the arrangement.
"""

import numpy as np
from PIL import Image, ImageDraw

from streetlib.data.canvas import jitter, pick, scale

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


def cue_layout(rng, cam, geometry, canvas_size):
    """Where the cue objects are and their outlines: drawn the same way whatever the class."""
    cues = []
    for _ in range(rng.integers(4, 9)):
        side = 1 if rng.random() < 0.5 else -1
        kind = pick(rng, ("board", "blade", "disc"))
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


def pair_layout(rng, cam, geometry, canvas_size):
    """Where the layout task's pairs of panels hang and their outlines: 2 to 4 tall banners over the road and the
    kerbs, 30% to 60% of the picture high when the frame allows (near enough to show both panels apart), drawn the
    same way whatever the class."""
    pairs = []
    for _ in range(rng.integers(2, 5)):
        side = 1 if rng.random() < 0.5 else -1
        width, height = rng.uniform(0.8, 1.4), rng.uniform(2.2, 3.6)
        x = side * rng.uniform(0.6, geometry["road_half"] + 0.8)
        room = cam.cx if side < 0 else canvas_size - cam.cx
        # The depth that gives the drawn height, but never so near that the banner leaves the frame at the side.
        nearest = 1.05 * cam.focal * (abs(x) + width / 2) / room
        z = max(cam.focal * height / (canvas_size * rng.uniform(0.3, 0.6)), nearest, 2.0)
        # Its lower edge 1 to 2 m above the street; lower if its top would leave the frame (the camera sees up to
        # `highest`).
        highest = cam.height + cam.horizon * z / cam.focal - height / 2
        y = min(height / 2 + rng.uniform(1.0, 2.0), highest)
        pairs.append({"kind": "blade", "x": x, "y": y, "z": z, "width": width, "height": height})
    return pairs


def cue_style(rng, region, twin, *, labelled):
    """Colours and pattern of one cue object, from its city's style within the region family (any city's style
    when not ``labelled``)."""
    if not labelled:
        region, twin = rng.integers(2), rng.integers(len(_CUE_STYLES[0]))
    weights = _CUE_STYLES[region][twin][2]
    patterns = _WEST_PATTERNS if region == 0 else _EAST_PATTERNS
    pattern = patterns[rng.choice(len(patterns), p=weights)]
    bg, fg = _colours(rng, region, twin)
    return {"pattern": pattern, "bg": bg, "fg": fg}


def _colours(rng, region, twin):
    """Background and foreground colours of one cue object in the style of city ``twin`` of ``region`` (neutral
    ones now and then), jittered: two RGB tuples."""
    bgs, fgs, _ = _CUE_STYLES[region][twin]
    family = _WEST if region == 0 else _EAST
    if rng.random() < _NEUTRAL_CUE_PROB:
        bg, fg = (_NEUTRAL[i] for i in rng.choice(len(_NEUTRAL), 2, replace=False))
    else:
        bg_name = pick(rng, bgs)
        bg, fg = family[bg_name], family[pick(rng, [name for name in fgs if name != bg_name])]
    return jitter(rng, bg, 20), jitter(rng, fg, 20)


def pair_style(rng, twin, *, top_bands):
    """Colours of one pair of panels (`draw_pair`): the city's twin pair's colours from either region's family, so
    they say which twin pair and nothing about the region. ``top_bands`` says which panel goes on top."""
    bg, fg = _colours(rng, int(rng.integers(2)), twin)
    return {"bg": bg, "fg": fg, "top_bands": bool(top_bands)}


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


def _bars(draw, rng, w, h, fg, bg):
    """Vertical bands, as `_stripes` draws horizontal ones."""
    bands = int(rng.integers(3, 8))
    for i in range(0, bands, 2):
        x0 = w * i / bands
        draw.rectangle((x0, 0, max(x0, w * (i + 1) / bands - 1), h), fill=fg)


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
        draw.line((x, 0, x, h), fill=scale(bg, 0.6), width=max(1, w // 24))
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


def draw_cue(canvas, cam, rng, cue, style):
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


# A pair's panels and the strip of wall between them, as fractions of the cue object's height.
_PANEL = 0.35
_GAP = 1.0 - 2 * _PANEL


def draw_pair(canvas, cam, rng, cue, style, *, min_gap):
    """Paste one pair of panels (the layout task) in the outline of ``cue``, or nothing when the strip of wall
    between them would be under ``min_gap`` canvas pixels (too small to keep the panels apart at the output size).

    Args:
        canvas: `streetlib.data.canvas.Canvas`.
        cam: `streetlib.data.canvas.Camera`.
        rng: `np.random.Generator`, draws the bands; the region-dependent stream.
        cue: dict of `cue_layout` (its outline is used as a rectangle whatever its kind).
        style: dict of `pair_style`.
        min_gap: float, the smallest strip drawn, in canvas pixels.

    Returns:
        bool, whether the pair was drawn. Depends on the geometry only, never on the region.
    """
    (x0, y0), (x1, y1) = (
        cam.project(cue["x"] - cue["width"] / 2, cue["y"] + cue["height"] / 2, cue["z"]),
        cam.project(cue["x"] + cue["width"] / 2, cue["y"] - cue["height"] / 2, cue["z"]),
    )
    left, top = int(round(x0)), int(round(y0))
    width, height = int(round(x1)) - left, int(round(y1)) - top
    panel = int(round(height * _PANEL))
    if width < 2 or height - 2 * panel < min_gap:
        return False
    patterns = (_stripes, _bars) if style["top_bands"] else (_bars, _stripes)
    outline = Image.new("L", (width, panel), 255)
    for pattern, y in zip(patterns, (top, top + height - panel), strict=True):
        tile = Image.new("RGB", (width, panel), style["bg"])
        pattern(ImageDraw.Draw(tile), rng, width, panel, style["fg"], style["bg"])
        canvas.paste_cue(tile, outline, (left, y))
    return True
