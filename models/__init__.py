"""Training side of segserve: architectures, data, losses, metrics, train/evaluate CLIs (torch)."""
