"""Training loop, optimisers and checkpointing."""
