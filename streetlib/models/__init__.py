"""Networks: the backbone registry, weight sources, and the two-output model built on them."""
