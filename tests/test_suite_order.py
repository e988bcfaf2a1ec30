"""The suite's schedule (tests/conftest.py SLOWEST_FIRST) names modules that exist: a renamed one would silently
fall back to the end of the queue."""
import pathlib

from tests.conftest import REPO, SLOWEST_FIRST


def test_slowest_first_names_existing_test_modules():
  missing = [m for m in SLOWEST_FIRST if not (REPO / m).is_file()]
  assert not missing, f"tests/conftest.py SLOWEST_FIRST names missing modules: {missing}"
  assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST) and all(pathlib.PurePath(m).parts[0] == "tests"
                                                                for m in SLOWEST_FIRST)
