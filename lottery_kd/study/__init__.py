"""A study on disk: the workdir's paths, its lock, snapshots and resume checkpoints, result
rows, the retrain variants as data, and the IMP driver that runs them."""
