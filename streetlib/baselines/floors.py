"""The no-network floor: features computed from the pixels alone (downsampled pixels, colour statistics), so that a
reader sees what the deep features add over them."""

import numpy as np

from streetlib.baselines.features import area_average, area_weights

# Baselines without a network: what any classifier gets from the pixels alone (see `floor_features`).
FLOORS = ("pixels", "colour-stats")
# The side of the "pixels" floor's downsampled image, and the bins of each channel's histogram in "colour-stats".
FLOOR_GRID = 8
FLOOR_BINS = 8


def floor_features(data, kind, *, chunk=64):
    """Features without any network, one vector per image of ``data``: the floor a classifier gets from the pixels.

    Args:
        data: `StreetData` (uint8 images `(n, H, W, 3)`).
        kind: one of `FLOORS`:

            - ``"pixels"``: the image downsampled to 8x8 by area averaging (each output pixel the mean of the
              pixels under it; pixels straddling two cells count in each by their overlap, so any H and W work),
              scaled to [0, 1] and flattened in (row, column, channel) order: 192 values.
            - ``"colour-stats"``: per channel (red, green, blue in turn) the mean and the standard deviation
              (population, ddof=0) of its values scaled to [0, 1], then an 8-bin histogram of its 0-255 values
              (bins of width 32, as fractions of the pixels, summing to 1): 3 x (2 + 8) = 30 values.
        chunk: int, images processed at a time (bounds the float copy in memory). Default 64.

    Returns:
        float32 `(len(data), 192)` for "pixels", `(len(data), 30)` for "colour-stats".
    """
    if kind not in FLOORS:
        raise ValueError(f"Invalid `kind`. Expected one of {FLOORS}. Received: kind={kind!r}")
    images = data.images
    n, height, width, _ = images.shape
    if kind == "pixels":
        rows, cols = area_weights(height, FLOOR_GRID), area_weights(width, FLOOR_GRID)
    out = []
    for start in range(0, n, chunk):
        x = images[start : start + chunk]
        if kind == "pixels":
            out.append(area_average(x.astype(np.float64) / 255.0, rows, cols).reshape(len(x), -1))
        else:
            flat = x.reshape(len(x), -1, 3)
            scaled = flat.astype(np.float64) / 255.0
            bins = flat // (256 // FLOOR_BINS)
            hist = np.stack([(bins == b).mean(axis=1) for b in range(FLOOR_BINS)], axis=-1)  # (n, 3 channels, bins)
            stats = np.concatenate([scaled.mean(axis=1)[..., None], scaled.std(axis=1)[..., None], hist], axis=-1)
            out.append(stats.reshape(len(x), -1))
    dim = 3 * FLOOR_GRID**2 if kind == "pixels" else 3 * (2 + FLOOR_BINS)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
