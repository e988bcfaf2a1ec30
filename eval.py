"""Evaluation entry point: FID, mIoU and pixel accuracy by the paper's protocol (issue #5, not yet built)."""
import sys

if __name__ == "__main__":
  sys.exit("eval.py: evaluation (FID / mIoU / accuracy) is not implemented yet; it is tracked as issue #5.")
