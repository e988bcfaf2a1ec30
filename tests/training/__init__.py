"""Tests for spade_jax.training."""
