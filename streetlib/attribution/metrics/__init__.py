"""Is the map right? Every measurement of attribution maps, one registry of them (`registry.METRICS`).

- `localization`: pure scores of maps against the cue masks (pointing game, relevance mass and rank accuracy, mask
  AUC), their chance levels and the random-map floor.
- `faithfulness`: deletion and insertion curves and their areas, which run the model on perturbed images.
- `sanity`: checks that recompute the maps for another class or another model (random logit, model-parameter and
  data randomisation), and the randomised or permuted-label models they need.
- `intervals`: the percentile bootstrap interval of a mean of per-image scores.
- `registry`: each metric by name with its direction, chance level, family and what it needs.
"""
