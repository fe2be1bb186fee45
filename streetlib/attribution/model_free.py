"""Model-free maps: what a map scores without looking at the model, the leaderboard's floor beside the random map.

A random map knows nothing about the image; an edge map knows the image but not the model. On street scenes the
cue objects (signs, lamps, windows) are full of edges, so a method can point at them by reproducing the image's
edges without explaining anything: Guided Backprop does (Adebayo et al. 2018, and `guided`'s docstring). A method
that does not beat the edge map shows no more than the image's edges show. The edge map is a registry method like
the others (same signature and conventions as `gradients`), so it is scored, ranked and sanity-checked with them;
being the same map for every model and class, it fails both sanity checks by construction (rank correlation 1),
which marks what failing looks like.
"""

import numpy as np
from scipy import ndimage

from streetlib.attribution.maps import Attribution


def edge(ex, inputs, *, output="city", target=None, rank=1):
    """The edge map: the Sobel gradient magnitude of the image, the same map whatever the model and class.

    Each channel's Sobel gradient magnitude (`scipy.ndimage.generic_gradient_magnitude` with `scipy.ndimage.sobel`,
    edges reflected), combined over channels by their root sum of squares. Computed on the model's input, so the
    normalisation's per-channel scale weighs the channels (under 'caffe' and 'unit' every channel counts alike).

    Args:
        ex: `explainer.Explainer` of the model; used only to name the class each map is said to explain, never for
            the map itself.
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        output: str, the output whose class is recorded. Default 'city'.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to record when ``target`` is None. Default 1 (the predicted class).

    Returns:
        `Attribution` 'edge', maps float32 `(batch, H, W)`, non-negative.

    Cost per image: one forward pass (the class it records); the map itself needs no model.
    """
    logits, classes = ex.classes(inputs, output=output, target=target, rank=rank)
    x = ex.check_inputs(inputs)
    per_channel = np.stack(
        [[ndimage.generic_gradient_magnitude(image[..., c], ndimage.sobel) for c in range(x.shape[-1])] for image in x]
    )
    maps = np.sqrt((per_channel**2).sum(axis=1)).astype(np.float32)
    return Attribution("edge", output, classes, maps, logits=logits)
