"""Training entry point (issue #3, not yet built)."""
import sys

if __name__ == "__main__":
  sys.exit("train.py: training is not implemented yet; it is tracked as issue #3.")
