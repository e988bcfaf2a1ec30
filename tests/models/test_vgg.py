"""VGG19 perceptual loss: torchvision-layout weights load, and features and the loss match torch."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spade_jax import losses
from spade_jax.models import VGG19
from spade_jax.testing import torch_reference as ref
from spade_jax.testing.parity import assert_close, nchw, nhwc
from spade_jax.weights import download
from spade_jax.weights.vgg19 import load_vgg19


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  """A random VGG19 saved like torchvision's file: `features.N` keys plus later layers and a classifier."""
  torch.manual_seed(0)
  net = ref.VGG19Features()
  sd = dict(net.state_dict())
  sd["features.30.weight"] = torch.randn(512, 512, 3, 3)  # conv5_2 onwards exist in the real file; unused here
  sd["classifier.0.weight"] = torch.randn(8, 16)
  path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=False)  # torchvision's 2017 file is the legacy format
  return net, path


@pytest.mark.parametrize("input_norm", ["official", "imagenet"])
def test_vgg_features_and_loss_match_torch(vgg_file, input_norm):
  net, path = vgg_file
  params = load_vgg19(path)
  rng = np.random.default_rng(0)
  fake = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  real = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  vgg = VGG19(input_norm)
  ours = vgg.apply({"params": params}, jnp.asarray(fake))

  def torch_in(x):
    t = nchw(x)
    if input_norm == "imagenet":
      mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
      std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
      t = ((t + 1) / 2 - mean) / std
    return t

  with torch.no_grad():
    theirs = net(torch_in(fake))
    want_loss = ref.vgg_loss(net, torch_in(fake), torch_in(real)).item()
  for i, (o, t) in enumerate(zip(ours, theirs)):
    assert_close(o, nhwc(t), atol=1e-4, rtol=1e-5, what=f"relu{i + 1}_1")
  got_loss = losses.vgg_loss(ours, vgg.apply({"params": params}, jnp.asarray(real)))
  assert_close(got_loss, want_loss, what="vgg loss")


def test_offline_without_weights_names_url_and_path(tmp_path, monkeypatch):
  monkeypatch.setenv("SPADE_JAX_CACHE", str(tmp_path))
  monkeypatch.setitem(download.PRETRAINED, "vgg19", download.Pretrained(
      "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "vgg19-dcbb9e9d.pth", "dcbb9e9d"))
  with pytest.raises(download.WeightsUnavailableError) as e:
    load_vgg19(progress=False)
  msg = str(e.value)
  assert "http://127.0.0.1:9/vgg19-dcbb9e9d.pth" in msg and str(tmp_path / "vgg19-dcbb9e9d.pth") in msg


def test_real_vgg19_url_is_torchvisions():
  assert download.PRETRAINED["vgg19"].url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
