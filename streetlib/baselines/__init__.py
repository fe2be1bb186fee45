"""Baselines without end-to-end training: deep features from a frozen backbone (`features`) and the no-network floor
(`floors`), scikit-learn classifiers fitted on them (`fit`) over a grid of configurations and split seeds (`grid`),
the results table and its comparisons (`results`), and their figures (`plots`)."""
