"""Explaining predictions: attribution methods by name (`registry`), the metrics that score them (`metrics`), the
leaderboard and concepts built on both, and their figures (`plots`)."""
