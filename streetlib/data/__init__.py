"""Datasets: loading Street10 / image folders / the synthetic demo data, saved splits, exploration, and the
tf.data pipelines that feed two-output models (raw -> processed)."""
