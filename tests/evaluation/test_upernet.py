"""UperNet-101 (mit-semseg ade20k-resnet101-upernet) parity with a torch reference in the official key layout; the
mit-semseg multi-scale test procedure; ADE20K label mapping; converter errors; offline weights message."""
import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from spade_jax.evaluation import upernet
from spade_jax.evaluation.upernet import (
  ADE20K_CLASSES,
  NUM_CLASSES,
  UperNet101,
  ade20k_label_to_eval_id,
  convert_upernet,
  load_upernet,
  normalize,
  pil_bilinear_resize,
  scale_sizes,
  segment_ade20k,
)
from spade_jax.weights import download
from tests.evaluation.torch_refs_seg import (
  FULL_DEPTH,
  MITResnetEncoder,
  MITUPerNet,
  apply_nchw,
  mit_semseg_predict,
  num_params,
  randomize_seg,
  tree_shapes,
  tree_size,
  zero_state_dict,
)

SMALL = (1, 1, 2, 1)  # reduced depth (and fpn_dim 128) for the fast numerical tests
SMALL_FPN = 128
ENCODER_PARAMS, DECODER_PARAMS = 42_623_936, 40_590_486


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """Reduced-depth torch reference, saved in the official two-file layout and loaded through load_upernet."""
  torch.manual_seed(0)
  enc = randomize_seg(MITResnetEncoder(SMALL), seed=1, residual_scale=0.5)
  dec = randomize_seg(MITUPerNet(fpn_dim=SMALL_FPN), seed=2)
  d = tmp_path_factory.mktemp("upernet")
  # mit-semseg's 2018 files predate torch's zip format: save the encoder in the legacy format, the decoder as zip.
  torch.save(enc.state_dict(), d / "encoder_epoch_50.pth", _use_new_zipfile_serialization=False)
  torch.save(dec.state_dict(), d / "decoder_epoch_50.pth")
  model, variables = load_upernet((d / "encoder_epoch_50.pth", d / "decoder_epoch_50.pth"),
                                  model=UperNet101(layers=SMALL, fpn_dim=SMALL_FPN))
  return enc, dec, model, variables


def test_upernet_logits_match_torch(small):
  enc, dec, model, variables = small
  # 72x88: conv5 is 3x3, so the 2x2 PPM bins overlap and the 6x6 bins repeat pixels (PyTorch's floor/ceil bins)
  x = np.random.default_rng(0).standard_normal((2, 3, 72, 88), dtype=np.float32)
  with torch.no_grad():
    ref = dec(enc(torch.from_numpy(x))).numpy()
  got = apply_nchw(model, variables, x)
  assert got.shape == (2, NUM_CLASSES, 18, 22)
  assert np.abs(ref).max() > 1.0
  err = np.abs(got - ref).max()
  print(f"UperNet (layers {SMALL}, fpn_dim {SMALL_FPN}) max |logit diff| {err:.2e}, "
        f"max |logit| {np.abs(ref).max():.2f}")
  assert err < 1e-4


def test_segment_ade20k_matches_mit_semseg_test_procedure(small):
  enc, dec, model, variables = small
  images = np.random.default_rng(1).integers(0, 256, (2, 24, 34, 3), dtype=np.uint8)
  # short side 24 -> 24x34 -> rounded up to 32x64; short side 40 capped by max_size 48 -> 33x48 -> 64x64; the
  # 34 -> 64 and 24 -> 32 resizes are upscales, 34 -> 48 -> 64 also exercises the cap
  assert scale_sizes(24, 34, (24, 40), 48) == [(32, 64), (64, 64)]
  got = np.asarray(segment_ade20k(model, variables, images, scales=(24, 40), max_size=48))
  ref = mit_semseg_predict(enc, dec, images, img_sizes=(24, 40), max_size=48)
  assert got.dtype == np.int32 and got.shape == (2, 24, 34)
  agree = (got == ref).mean()
  print(f"segment_ade20k vs mit-semseg procedure: {100 * agree:.3f}% pixels agree, {len(np.unique(ref))} classes")
  assert len(np.unique(ref)) > 5
  assert agree >= 0.999


def test_scale_sizes_and_pil_resize():
  assert scale_sizes(256, 256) == [(320, 320), (384, 384), (480, 480), (544, 544), (608, 608)]
  assert scale_sizes(256, 256, (256,)) == [(256, 256)]
  assert scale_sizes(300, 2000) == [(160, 1024), (160, 1024), (160, 1024), (160, 1024), (160, 1024)]
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (1, 37, 50, 3), dtype=np.uint8)
  resize = jax.jit(pil_bilinear_resize, static_argnums=1)
  for size in ((64, 96), (20, 31), (9, 12), (37, 80), (37, 50)):  # up, down (antialiased), one axis, same size
    ref = np.asarray(Image.fromarray(img[0]).resize((size[1], size[0]), Image.BILINEAR))
    got = np.asarray(resize(img, size))[0]
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref, err_msg=str(size))  # bit-exact
  x = np.asarray(normalize(np.full((1, 1, 1, 3), 255, np.uint8)))[0, 0, 0]
  np.testing.assert_allclose(x, (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_full_depth_layout_and_parameter_count():
  """The full ResNet-101 + UPerNet key layout converts key for key; parameter counts from jax.eval_shape."""
  with torch.device("meta"):
    enc, dec = MITResnetEncoder(), MITUPerNet()
  esd, dsd = enc.state_dict(), dec.state_dict()
  assert {"conv1.weight", "bn3.running_var", "layer1.0.downsample.0.weight", "layer3.22.bn3.weight",
          "layer4.2.conv3.weight"} <= set(esd)
  assert {"ppm_conv.3.1.running_mean", "ppm_last_conv.0.weight", "fpn_in.2.0.weight", "fpn_out.0.0.1.bias",
          "conv_last.0.0.weight", "conv_last.1.bias"} <= set(dsd)
  assert (num_params(esd), num_params(dsd)) == (ENCODER_PARAMS, DECODER_PARAMS)
  variables = convert_upernet(zero_state_dict(esd), zero_state_dict(dsd))
  assert tree_size(variables["params"]["encoder"]) == ENCODER_PARAMS
  assert tree_size(variables["params"]["decoder"]) == DECODER_PARAMS
  shapes = jax.eval_shape(lambda: UperNet101().init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  assert tree_size(shapes["params"]) == ENCODER_PARAMS + DECODER_PARAMS == 83_214_422
  assert tree_shapes(shapes) == tree_shapes(variables)


def test_converter_reports_missing_and_renamed_keys():
  with torch.device("meta"):
    esd, dsd = MITResnetEncoder(SMALL).state_dict(), MITUPerNet(fpn_dim=SMALL_FPN).state_dict()
  esd, dsd = zero_state_dict(esd), zero_state_dict(dsd)
  model = UperNet101(layers=SMALL, fpn_dim=SMALL_FPN)
  convert_upernet(esd, {"module." + k: v for k, v in dsd.items()}, model)  # DataParallel prefix is fine
  missing = dict(dsd)
  del missing["fpn_out.1.0.1.running_var"]
  with pytest.raises(ValueError, match=r"decoder/fpn_out1/bn/var"):
    convert_upernet(esd, missing, model)
  renamed = {("layer2.0.downsample.3.weight" if k == "layer2.0.downsample.1.weight" else k): v for k, v in esd.items()}
  with pytest.raises(ValueError, match=r"layer2\.0\.downsample\.3\.weight"):
    convert_upernet(renamed, dsd, model)
  extra = dict(esd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"fc\.weight"):
    convert_upernet(extra, dsd, model)


def test_ade20k_label_mapping():
  labels = np.array([[0, 1, 2, 150], [151, 255, -1, 75]])
  assert ade20k_label_to_eval_id(labels).tolist() == [[255, 0, 1, 149], [255, 255, 255, 74]]
  assert ade20k_label_to_eval_id(np.arange(151, dtype=np.uint8)).tolist() == [255] + list(range(150))
  assert len(ADE20K_CLASSES) == NUM_CLASSES == 150
  assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
  assert "256" in upernet.PROTOCOL and "300, 375, 450, 525, 600" in upernet.PROTOCOL


def test_offline_message_names_url_and_path(tmp_path, offline):
  with pytest.raises(download.WeightsUnavailableError) as ei:
    load_upernet(progress=False)
  msg = str(ei.value)
  entry = download.PRETRAINED["upernet101_ade20k_encoder"]
  assert entry.url == ("http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/"
                       "encoder_epoch_50.pth")
  assert entry.url in msg and str(tmp_path / "cache" / entry.filename) in msg
  assert download.PRETRAINED["upernet101_ade20k_decoder"].url.endswith("ade20k-resnet101-upernet/decoder_epoch_50.pth")
  assert list((tmp_path / "cache").iterdir()) == []


@FULL_DEPTH
def test_full_depth_logits_match_torch(tmp_path):
  """Opt-in (about a minute on 2 cores): the real depth [3, 4, 23, 3], through the .pth files and load_upernet."""
  enc = randomize_seg(MITResnetEncoder(), seed=4, residual_scale=0.3)
  dec = randomize_seg(MITUPerNet(), seed=5)
  torch.save(enc.state_dict(), tmp_path / "enc.pth")
  torch.save(dec.state_dict(), tmp_path / "dec.pth")
  model, variables = load_upernet((tmp_path / "enc.pth", tmp_path / "dec.pth"))
  x = np.random.default_rng(0).standard_normal((1, 3, 72, 88), dtype=np.float32)
  with torch.no_grad():
    ref = dec(enc(torch.from_numpy(x))).numpy()
  got = apply_nchw(model, variables, x)
  err = np.abs(got - ref).max()
  print(f"UperNet-101 full depth max |logit diff| {err:.2e}, max |logit| {np.abs(ref).max():.2f}")
  assert np.abs(ref).max() > 1.0 and err < 2e-6 * np.abs(ref).max()  # 1e-4 at |logit| 50
