"""Training: losses, optimizer and schedules, the jitted train and eval steps, and the
training loop with its callbacks."""
