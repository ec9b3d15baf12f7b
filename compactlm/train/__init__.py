"""Training: step, losses, optimizer, checkpoints, loop, device mesh."""
