"""Training runs: the frozen run configuration, Keras callbacks, and `run_phase` (resume, cache, manifests)."""
