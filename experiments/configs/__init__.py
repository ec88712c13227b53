"""ml_collections defaults shared by the experiments."""
