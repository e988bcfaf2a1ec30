"""Pretrained-weight loading: torch-free ``.pth`` reader and download cache."""
