"""Label maps -> one-hot (+ don't-care) (+ instance edges), and clear errors for out-of-range ids."""
import jax.numpy as jnp
import numpy as np
import pytest

from spade_jax.semantics import check_label_range, instance_edges, make_semantics


def test_one_hot_with_dontcare_and_edges():
  label = np.array([[[0, 1, 3], [3, 2, 2]]])  # 3 == label_nc: the don't-care slot (mapped from 255 by the loader)
  inst = np.array([[[5, 5, 7], [5, 5, 7]]])
  sem = np.asarray(make_semantics(jnp.asarray(label), jnp.asarray(inst), label_nc=3, contain_dontcare_label=True,
                                  no_instance=False))
  assert sem.shape == (1, 2, 3, 5)
  np.testing.assert_array_equal(sem[..., :4].argmax(-1), label)
  np.testing.assert_array_equal(sem[..., :4].sum(-1), 1)
  np.testing.assert_array_equal(sem[0, :, :, 4], [[0, 1, 1], [0, 1, 1]])


def test_edges_four_neighbour_rule():
  inst = np.zeros((1, 5, 5), np.int32)
  inst[0, 2, 2] = 1  # one pixel: itself and its 4 neighbours are edges, diagonals are not
  e = np.asarray(instance_edges(jnp.asarray(inst)))[0, ..., 0]
  want = np.zeros((5, 5))
  want[2, 2] = want[1, 2] = want[3, 2] = want[2, 1] = want[2, 3] = 1
  np.testing.assert_array_equal(e, want)


def test_missing_instance_map_is_an_error():
  with pytest.raises(ValueError, match="no_instance"):
    make_semantics(jnp.zeros((1, 2, 2), jnp.int32), None, label_nc=3, contain_dontcare_label=False, no_instance=False)


def test_out_of_range_label_names_id_and_label_nc():
  with pytest.raises(ValueError, match=r"label id 200 in a\.png .*label_nc=182"):
    check_label_range(np.array([[0, 200]]), 182, True, source="a.png")
  with pytest.raises(ValueError, match="contain_dontcare_label=True"):
    check_label_range(np.array([[0, 13]]), 13, False)  # 255 -> 13 without a don't-care channel
  check_label_range(np.array([[0, 182]]), 182, True)  # the don't-care slot is valid
