"""Fixtures of the evaluation tests."""
import urllib.error
import urllib.request

import pytest


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """No network, and an empty weights cache at tmp_path / 'cache' (SPADE_JAX_CACHE)."""
  monkeypatch.setenv("SPADE_JAX_CACHE", str(tmp_path / "cache"))

  def refuse(*a, **k):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

  monkeypatch.setattr(urllib.request, "urlopen", refuse)
  return tmp_path / "cache"
