"""Baselines without end-to-end training: deep features from a frozen backbone, and scikit-learn classifiers on
them or on the no-network floor features."""
