"""The full-size COCO-Stuff generator (ngf 64, 184 channels, 256x256, 97,480,899 parameters) through the converter,
as the released latest_net_G.pth would go: torch reference -> .pth -> convert -> load -> synthesize == torch."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spade_jax
from spade_jax import convert
from tests.inference import util


@pytest.mark.slow
def test_full_size_coco_generator(tmp_path):
  g = util.torch_generator(184, 64, "normal", 256, batch=1, steps=1)
  path = util.save(g, tmp_path / "latest_net_G.pth")
  del g
  result = convert.main([f"--generator={path}", "--preset=coco_stuff", f"--out={tmp_path / 'coco'}"])
  assert result.info["parameters"] == {"G": 97_480_899}
  assert result.config.model.ngf == 64 and result.config.data.crop_size == 256
  model = spade_jax.load(tmp_path / "coco")
  rng = np.random.default_rng(0)
  label, inst = util.blocky(rng, 1, 256, 256, 183, 16), util.blocky(rng, 1, 256, 256, 6, 32)
  ours = model.synthesize(label, inst, return_float=True)
  t = util.torch_generator(184, 64, "normal", 256, steps=0)
  t.load_state_dict(torch.load(path))
  theirs = util.torch_images(t.eval(), util.semantics_np(label, inst, 183, True))
  assert np.abs(ours - theirs).max() <= 1e-4
