"""Smoke runs of the benchmark scripts in bench/."""
