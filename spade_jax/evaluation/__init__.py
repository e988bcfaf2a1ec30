"""Evaluation: pytorch-fid-exact FID (Flax FID-Inception), segmentation scores (DRN-D-105, confusion-matrix mIoU)."""
