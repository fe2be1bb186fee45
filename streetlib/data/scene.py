"""Synthetic street scenes: one picture of a street seen down its axis, with its cue mask (`render_scene`).

Each image shows sky, facades with windows on both sides, a road and sidewalks in perspective, lamps, trees, traffic
signs, parked cars, overhead wires and pedestrians, under random camera, lighting and noise. A few cue objects
(`streetlib.data.cues`) carry the region, and their pixels are recorded in a per-image mask.

How the labels are carried, so that explanation methods can be checked against the masks:

- Region lives only inside the masks. Everything else, including where the cue objects are, how big they are and
  their outlines, comes from a random stream that does not depend on the region. Rendering class ``w_k`` and its
  twin ``e_k`` from the same seed gives identical masks and identical pixels outside them.
- City = twin pair x region. The k-th city of each region shares a street style (facade palette, windows, heights,
  road markings, trees, wires) with the k-th city of the other region, so pixels outside the masks identify the
  pair but not the region. Inside the masks, each city draws its cue appearance from its region's family.
- In the layout task (``task="layout"``) the cue objects look alike in both regions: pairs of panels, one of
  horizontal bands and one of vertical bars, in the twin pair's colours. Which panel is on top decides the region
  (bands on top in the first region), so region needs features that see both panels and their order, which the
  first convolutions do not.

Scenes are drawn with Pillow at twice the output size and box-downsampled; a mask pixel is set when any part of it
came from a cue, so pixels outside the mask hold no cue colour at all.
"""

import numbers

import numpy as np

from streetlib.classes import SYNTH10
from streetlib.data.canvas import Camera, Canvas, jitter, pick, scale
from streetlib.data.cues import cue_layout, cue_style, draw_cue, draw_pair, pair_layout, pair_style

MIN_SIZE = 32
# What carries the region (`render_scene`): the cue objects' palette and patterns, or the arrangement of panels that
# look alike in both regions.
TASKS = ("cues", "layout")
# The layout task's narrowest strip of wall between two panels, in output pixels: at least the 6 pixels one feature
# of VGG16's block1_pool sees, so that no such feature sees both panels of a pair.
_MIN_GAP = 6
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

_OWN_STYLE_PROB = 0.65

_SKIES = (((92, 140, 210), (192, 212, 232)), ((150, 154, 166), (204, 204, 208)), ((64, 72, 124), (232, 164, 122)))
_CLOTHES = ((196, 40, 40), (30, 60, 140), (230, 200, 60), (40, 40, 40), (230, 230, 230), (60, 120, 70), (140, 90, 50))
_SKIN = ((236, 200, 170), (200, 150, 110), (140, 96, 64), (90, 60, 40))
_CARS = ((200, 30, 30), (230, 230, 230), (30, 30, 34), (40, 70, 150), (150, 150, 155), (220, 180, 40))


def check_int(value, name, minimum):
    """``value`` as an int, checked to be an int >= ``minimum`` (a bool is not). Raises ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Invalid `{name}`. Expected an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_task(task):
    """``task`` if it is one of `TASKS`; raises ValueError otherwise."""
    if task not in TASKS:
        raise ValueError(f"Invalid `task`. Expected one of {TASKS}. Received: task={task!r}")
    return task


def twin_layout(classes):
    """(region index, twin index) of each class; the generator needs 2 regions with equally many classes (at most one
    per street style). Raises ValueError otherwise."""
    sizes = [len(classes.classes_in(r)) for r in classes.region_names]
    if len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] > len(_STREET_STYLES):
        raise ValueError(
            f"Invalid `classes`. The synthetic generator needs 2 regions with the same number of classes (at most "
            f"{len(_STREET_STYLES)} each). Received: regions with {sizes} classes."
        )
    layout = []
    for cls, region in zip(classes.classes, classes.regions, strict=True):
        layout.append((classes.region_names.index(region), classes.classes_in(region).index(cls)))
    return layout


def _street_style(rng, twin):
    """The street style of one picture: each trait is the twin pair's own most of the time, another pair's
    otherwise, so cities overlap as real ones do."""
    own = _STREET_STYLES[twin]
    return {key: own[key] if rng.random() < _OWN_STYLE_PROB else pick(rng, _STREET_STYLES)[key] for key in own}


def _sky(rng, size, horizon):
    top, bottom = (np.array(jitter(rng, c, 18), np.float32) for c in pick(rng, _SKIES))
    t = np.clip(np.arange(size, dtype=np.float32) / max(horizon, 1.0), 0.0, 1.0)[:, None]
    column = top * (1.0 - t) + bottom * t
    return np.broadcast_to(column[:, None, :], (size, size, 3)).astype(np.uint8)


def _street(canvas, cam, rng, style, geometry, shade):
    """Ground, road, markings, the far skyline and both rows of facades with their windows."""
    size = canvas.size
    road_half, walls = geometry["road_half"], geometry["walls"]
    far = geometry["far"]
    canvas.rectangle((0, cam.horizon, size, size), jitter(rng, (150, 146, 140), 14))
    road = [
        cam.project(-road_half, 0, _NEAR_Z),
        cam.project(road_half, 0, _NEAR_Z),
        cam.project(road_half, 0, far),
        cam.project(-road_half, 0, far),
    ]
    canvas.polygon(road, jitter(rng, style["road"], 10))
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
        canvas.rectangle((a, b, c, d), jitter(rng, (150, 160, 172), 16))
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
    facades = style["facades"] if rng.random() < _OWN_STYLE_PROB else pick(rng, _STREET_STYLES)["facades"]
    colour = pick(rng, facades)
    colour = scale(jitter(rng, colour, 14), shade)
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
        scale(colour, 0.55),
    )
    win_w, win_h = style["window_size"]
    window = scale(jitter(rng, style["window"], 12), shade)
    lit = scale(window, 1.6)
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


def _lamp(canvas, cam, x, z, colour):
    pole = [cam.project(x - 0.08, 6.0, z), cam.project(x + 0.08, 0, z)]
    canvas.rectangle((*pole[0], *pole[1]), colour)
    arm_end = cam.project(x - np.sign(x) * 1.2, 6.0, z)
    canvas.line([cam.project(x, 6.0, z), arm_end], colour, max(1, int(cam.focal * 0.08 / z)))
    r = cam.focal * 0.25 / z
    canvas.ellipse((arm_end[0] - r, arm_end[1] - r * 0.5, arm_end[0] + r, arm_end[1] + r * 0.5), (250, 240, 200))


def _tree(canvas, cam, rng, x, z):
    (a, b), (c, d) = cam.project(x - 0.15, 3.5, z), cam.project(x + 0.15, 0, z)
    canvas.rectangle((a, b, c, d), jitter(rng, (90, 64, 40), 12))
    radius = rng.uniform(1.4, 2.8)
    for _ in range(3):
        cx, cy = cam.project(x + rng.uniform(-0.6, 0.6), 3.5 + radius * rng.uniform(0.4, 1.0), z)
        r = cam.focal * radius * rng.uniform(0.6, 1.0) / z
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), jitter(rng, (58, 112, 52), 24))


def _pedestrian(canvas, cam, rng, x, z):
    height = rng.uniform(1.5, 1.9)
    (a, b), (c, d) = cam.project(x - 0.2, height * 0.48, z), cam.project(x + 0.2, 0, z)
    canvas.rectangle((a, b, c, d), jitter(rng, (50, 50, 60), 20))
    (a, b), (c, d) = cam.project(x - 0.25, height * 0.85, z), cam.project(x + 0.25, height * 0.48, z)
    canvas.rectangle((a, b, c, d), jitter(rng, pick(rng, _CLOTHES), 30))
    cx, cy = cam.project(x, height * 0.93, z)
    r = cam.focal * 0.11 / z
    canvas.ellipse((cx - r, cy - r, cx + r, cy + r), pick(rng, _SKIN))


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
    colour = jitter(rng, pick(rng, _CARS), 20)
    (a, b), (c, d) = cam.project(x - 0.9, 1.0, z), cam.project(x + 0.9, 0.2, z)
    canvas.rectangle((a, b, c, d), colour)
    (a, b), (c, d) = cam.project(x - 0.7, 1.45, z), cam.project(x + 0.7, 1.0, z)
    canvas.rectangle((a, b, c, d), scale(colour, 0.85))
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


def render_scene(rng, *, size, city_index, classes=SYNTH10, cues=True, task="cues"):
    """Draw one street scene of class ``city_index``.

    The scene (layout, street style of the city's twin pair, cue positions and outlines, lighting, noise) comes
    from one random stream and the cue appearance from a second, both seeded from ``rng``; only the second
    depends on the region. So a western and an eastern twin city rendered from equal ``rng`` states give the same
    mask and the same pixels outside it. The order of the draws from these streams is the dataset (the same seed
    gives byte-identical images in every version), which is why the scene is composed in this one function of about
    70 lines rather than split.

    Args:
        rng: `np.random.Generator`, consumed (two draws) to seed the scene and the cue appearance.
        size: int >= 32, output height and width in pixels.
        city_index: int, the class index in ``classes.classes``.
        classes: `ClassSpec` with 2 regions of equally many classes (at most 5 each). Default `SYNTH10`.
        cues: bool. If False, each cue object takes the style of a random city of either region (in the layout
            task, a random order), so it carries no label: a control where region cannot be learned. Default True.
        task: one of `TASKS`: 'cues' (the region in the cue objects' palette and patterns) or 'layout' (in the
            order of two panels that look alike in both regions; pairs too small to keep their panels apart at
            this size are not drawn). Default 'cues'.

    Returns:
        (image, mask): uint8 `(size, size, 3)` RGB, and uint8 `(size, size)` in {0, 1}, 1 where a pixel shows a
        cue object.
    """
    size = check_int(size, "size", MIN_SIZE)
    task = check_task(task)
    layout = twin_layout(classes)
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
    cam = Camera(
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
    canvas = Canvas(_sky(scene_rng, canvas_size, cam.horizon))
    _street(canvas, cam, scene_rng, style, geometry, shade)

    places = pair_layout if task == "layout" else cue_layout
    items = [(cue["z"], "cue", cue) for cue in places(scene_rng, cam, geometry, canvas_size)]
    items += _objects(scene_rng, style, geometry)
    # Far to near, so nearer objects cover farther ones (and clear the cue mask where they do).
    for z, kind, what in sorted(items, key=lambda item: -item[0]):
        if kind == "cue" and task == "layout":
            top_bands = region == 0 if cues else cue_rng.random() < 0.5
            panels = pair_style(cue_rng, twin, top_bands=top_bands)
            draw_pair(canvas, cam, cue_rng, what, panels, min_gap=_MIN_GAP * _SUPERSAMPLE)
        elif kind == "cue":
            draw_cue(canvas, cam, cue_rng, what, cue_style(cue_rng, region, twin, labelled=cues))
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
