"""DeepLabV2-ResNet-101 MSC (kazuto1011/deeplab-pytorch, COCO-Stuff 164k) parity with a torch reference in the
official key layout; its test step; COCO-Stuff label mapping; converter errors; offline weights message."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spade_jax.evaluation import deeplab
from spade_jax.evaluation.deeplab import (
  COCO_STUFF_CLASSES,
  NUM_CLASSES,
  DeepLabV2MSC,
  cocostuff_label_to_eval_id,
  convert_deeplab,
  load_deeplab,
  max_pool_ceil,
  resize_scale_factor,
  segment_cocostuff,
)
from spade_jax.weights import download
from tests.evaluation.torch_refs_seg import (
  FULL_DEPTH,
  TorchDeepLabV2,
  TorchMSC,
  apply_nchw,
  deeplab_predict,
  nchw,
  num_params,
  randomize_seg,
  tree_shapes,
  tree_size,
  zero_state_dict,
)

SMALL = (1, 1, 2, 1)
TRUNK_PARAMS, ASPP_PARAMS = 42_500_160, 13_419_224  # trunk = torchvision ResNet-101 without fc


def _random_ref(n_blocks, seed, residual_scale):
  """Random-weight MSC(DeepLabV2) torch reference."""
  ref = randomize_seg(TorchMSC(TorchDeepLabV2(NUM_CLASSES, n_blocks)), seed=seed, residual_scale=residual_scale)
  with torch.no_grad():  # the stem sees BGR - mean (|x| up to ~150): running variance of that scale keeps logits O(1)
    ref.base.layer1.conv1.bn.running_var.mul_(5000.0)
  return ref


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """Reduced-depth MSC(DeepLabV2) torch reference saved like the official .pth and loaded through load_deeplab."""
  torch.manual_seed(0)
  ref = _random_ref(SMALL, seed=3, residual_scale=0.5)
  path = tmp_path_factory.mktemp("deeplab") / "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
  torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)  # the 2019 file predates the zip format
  model, variables = load_deeplab(path, model=DeepLabV2MSC(n_blocks=SMALL))
  return ref, model, variables


def test_deeplab_msc_logits_match_torch(small):
  ref, model, variables = small
  # 70x90: odd stem/ceil-mode sizes (35x45 -> 18x23 -> 9x12) and a 0.75 scale that is not an integer size
  x = np.random.default_rng(0).standard_normal((1, 3, 70, 90), dtype=np.float32) * 60
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
    want_base = ref.base(torch.from_numpy(x)).numpy()
  got = apply_nchw(model, variables, x)
  assert got.shape == want.shape == (1, NUM_CLASSES, 9, 12)
  scale = np.abs(want_base).max()
  assert scale > 1.0
  err = np.abs(got - want).max()
  print(f"DeepLabV2 MSC (blocks {SMALL}) max |logit diff| {err:.2e}, max |logit| {scale:.2f}")
  assert err < 1e-4


def test_segment_cocostuff_matches_torch_test_step(small):
  ref, model, variables = small
  images = np.random.default_rng(1).integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)
  got = np.asarray(segment_cocostuff(model, variables, images))
  want = deeplab_predict(ref, images)
  assert got.dtype == np.int32 and got.shape == (2, 40, 52)
  agree = (got == want).mean()
  print(f"segment_cocostuff vs deeplab-pytorch test step: {100 * agree:.3f}% pixels agree, "
        f"{len(np.unique(want))} classes")
  assert len(np.unique(want)) > 5
  assert agree >= 0.999


def test_ceil_mode_pool_and_scale_factor_resize():
  rng = np.random.default_rng(2)
  for h, w in ((8, 9), (13, 6), (128, 96), (65, 33)):
    x = rng.standard_normal((1, 2, h, w), dtype=np.float32)
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True).numpy()
    np.testing.assert_array_equal(nchw(max_pool_ceil(x.transpose(0, 2, 3, 1))), want)
    for p in (0.5, 0.75):
      want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=p, mode="bilinear",
                                             align_corners=False).numpy()
      np.testing.assert_allclose(nchw(resize_scale_factor(x.transpose(0, 2, 3, 1), p)), want, atol=1e-6)


def test_full_depth_layout_and_parameter_count():
  """The full ResNet-101 + ASPP key layout of MSC(DeepLabV2) converts key for key; parameter count via eval_shape."""
  with torch.device("meta"):
    sd = TorchMSC(TorchDeepLabV2()).state_dict()
  assert {"base.layer1.conv1.conv.weight", "base.layer1.conv1.bn.running_mean",
          "base.layer2.block1.shortcut.conv.weight", "base.layer4.block23.increase.bn.running_var",
          "base.layer5.block3.conv3x3.conv.weight", "base.aspp.c0.weight", "base.aspp.c3.bias"} <= set(sd)
  assert num_params(sd) == TRUNK_PARAMS + ASPP_PARAMS == 55_919_384
  variables = convert_deeplab(zero_state_dict(sd))
  assert tree_size(variables["params"]["base"]["aspp"]) == ASPP_PARAMS
  single = DeepLabV2MSC(scales=())  # the MSC scales share the base's variables
  shapes = jax.eval_shape(lambda: single.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32)))
  assert tree_size(shapes["params"]) == 55_919_384
  assert tree_shapes(shapes) == tree_shapes(variables)


def test_converter_reports_missing_and_renamed_keys():
  with torch.device("meta"):
    sd = zero_state_dict(TorchMSC(TorchDeepLabV2(NUM_CLASSES, SMALL)).state_dict())
  model = DeepLabV2MSC(n_blocks=SMALL)
  convert_deeplab({"module." + k: v for k, v in sd.items()}, model)  # DataParallel prefix is fine
  missing = {k: v for k, v in sd.items() if k != "base.aspp.c2.bias"}
  with pytest.raises(ValueError, match=r"base/aspp/c2/bias"):
    convert_deeplab(missing, model)
  # the pre-2019 layout (`scale.` prefix, `proj` shortcut) is reported, not silently accepted
  renamed = {k.replace("block1.shortcut", "block1.proj"): v for k, v in sd.items()}
  with pytest.raises(ValueError, match=r"base\.layer2\.block1\.proj\.conv\.weight"):
    convert_deeplab(renamed, model)
  with pytest.raises(ValueError, match=r"scale\.layer1"):
    convert_deeplab({k.replace("base.", "scale.", 1): v for k, v in sd.items()}, model)


def test_cocostuff_label_mapping():
  labels = np.array([[0, 1, 181, 182], [183, 255, -1, 90]])
  assert cocostuff_label_to_eval_id(labels).tolist() == [[0, 1, 181, 255], [255, 255, 255, 90]]
  assert cocostuff_label_to_eval_id(np.arange(183, dtype=np.uint8)).tolist() == list(range(182)) + [255]
  assert len(COCO_STUFF_CLASSES) == NUM_CLASSES == 182
  assert COCO_STUFF_CLASSES[0] == "person" and COCO_STUFF_CLASSES[-1] == "wood"
  assert "256x256" in deeplab.PROTOCOL and "0.75" in deeplab.PROTOCOL


def test_offline_message_names_url_and_path(tmp_path, offline):
  with pytest.raises(download.WeightsUnavailableError) as ei:
    load_deeplab(progress=False)
  msg = str(ei.value)
  url = ("https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
         "deeplabv2_resnet101_msc-cocostuff164k-100000.pth")
  assert download.PRETRAINED["deeplabv2_cocostuff164k"].url == url
  assert url in msg and str(tmp_path / "cache" / "deeplabv2_resnet101_msc-cocostuff164k-100000.pth") in msg
  assert "SPADE_JAX_CACHE" in msg
  assert list((tmp_path / "cache").iterdir()) == []


@FULL_DEPTH
def test_full_depth_logits_match_torch(tmp_path):
  """Opt-in (about a minute on 2 cores): the real depth [3, 4, 23, 3] MSC, through the .pth file and load_deeplab."""
  ref = _random_ref((3, 4, 23, 3), seed=6, residual_scale=0.3)
  torch.save(ref.state_dict(), tmp_path / "deeplab.pth")
  model, variables = load_deeplab(tmp_path / "deeplab.pth")
  x = np.random.default_rng(0).standard_normal((1, 3, 70, 90), dtype=np.float32) * 60
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  got = apply_nchw(model, variables, x)
  err = np.abs(got - want).max()
  print(f"DeepLabV2 MSC full depth max |logit diff| {err:.2e}, max |logit| {np.abs(want).max():.2f}")
  assert np.abs(want).max() > 1.0 and err < 2e-6 * np.abs(want).max()  # 1e-4 at |logit| 50
