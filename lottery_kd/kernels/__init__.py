"""Optional native kernels. Each falls back to XLA where it cannot be built or does not apply."""
