"""What does the model key on across a whole class? Concepts discovered from its activations (CRAFT-style), scored
against the cue masks, beside a baseline that never looks at the model.

The original study's per-image Grad-CAM "can't detect the universal features across the whole dataset". The modules,
in the order the data flows through them (each imports only the ones after it):

- `report`: the rule that scores each class's top concept of every source on held-out images (test split, fresh
  images of the generator), verdicts by `streetlib.evaluation.stats`, the report in words.
- `score`: concept maps and contribution maps of new images, mask shares per image and pooled, the deletion test.
- `discover`: NMF of a layer's activations over a class's images, ranked by gradient x concept activation; the
  trained model, its randomised-weights copy and the baseline on the discovery images (`discover_sources`).
- `doersch`: the baseline without the model (Doersch et al. 2012), with its own small HOG.
- `activations`: reading a layer of the model: which layer, activations and gradients in batches, predictions.
- `config`: the settings (`ConceptConfig`, `PatchConfig`) and the checks of the images every function takes.

Their figures are in `streetlib.attribution.plots`.
"""
