"""Explaining predictions: attribution methods (`methods`) and the metrics that score them (`metrics`)."""
