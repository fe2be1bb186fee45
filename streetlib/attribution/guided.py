"""Guided Backpropagation (Springenberg et al. 2015) and Guided Grad-CAM (Selvaraju et al. 2017), as registry methods.

Both run on `explainer.Explainer`'s guided clone: ReLUs pass a gradient back only where both the input and the
incoming gradient are positive. They fail the model-parameter randomisation check (Adebayo et al. 2018): their maps
look much the same for a model with random weights, because the guided gradient mostly reconstructs the image. The
leaderboard keeps them to show it.
"""

import numpy as np

from streetlib.attribution.maps import Attribution, normalize_maps, upsample_maps


def guided_backprop(ex, inputs, *, output="city", target=None, rank=1):
    """Guided Backpropagation of the class logit w.r.t. the input, reduced to one map per image.

    Differentiates the class logit through guided ReLUs down to the input; no layer. Cost: one forward and one
    backward pass per image.

    Args:
        ex: `explainer.Explainer` of the model.
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        output: str, the output to explain. Default 'city'.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to explain when ``target`` is None. Default 1 (the predicted class).

    Returns:
        `Attribution` with maps float32 `(batch, H, W)`: absolute guided gradients summed over channels;
        ``per_channel`` the guided gradients float32 `(batch, H, W, C)`.
    """
    g = ex.guided_gradients(inputs, output=output, target=target, rank=rank)
    maps = np.abs(g.gradients).sum(axis=-1)
    return Attribution("guided_backprop", output, g.target, maps, logits=g.logits, per_channel=g.gradients)


def guided_grad_cam(ex, inputs, *, output="city", target=None, rank=1):
    """Guided Grad-CAM: Guided Backpropagation times the Grad-CAM map at ``ex.layer``, reduced to one map per image.

    Differentiates the class logit w.r.t. the layer's feature map (Grad-CAM) and, through guided ReLUs, w.r.t. the
    input. Cost: two forward and two backward passes per image.

    Args: as `guided_backprop`.

    Returns:
        `Attribution` with maps float32 `(batch, H, W)`: absolute values of guided gradients times the upsampled,
        per-image normalised Grad-CAM, summed over channels; ``per_channel`` that product before the sum, float32
        `(batch, H, W, C)`.
    """
    x = ex.check_inputs(inputs)
    cam = ex.grad_cam(x, output=output, target=target, rank=rank)
    weights = normalize_maps(upsample_maps(cam.maps, x.shape[1:3]))
    # Explain exactly the classes Grad-CAM explained, whatever ``rank`` picked.
    guided = ex.guided_gradients(x, output=output, target=cam.target).gradients * weights[..., None]
    maps = np.abs(guided).sum(axis=-1)
    return Attribution("guided_grad_cam", output, cam.target, maps, logits=cam.logits, per_channel=guided)
