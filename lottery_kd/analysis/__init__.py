"""Reading finished (or running) studies: report, learning curves, mask overlap, status,
linear mode connectivity and the Deep Bootstrap."""
