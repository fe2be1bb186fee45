"""Scoring trained models: accuracy, top-k, per-class scores, confusion, calibration, paired intervals."""
