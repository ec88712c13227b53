"""Where the computation runs: the device mesh and multi-host set-up, malloc tuning, and the
environment record of every start."""
