"""Scoring trained models: accuracy, top-k, per-class scores, confusion, calibration; and the statistics of every
comparison (`stats`: paired differences over split seeds, Holm, equivalence, the three verdicts)."""
