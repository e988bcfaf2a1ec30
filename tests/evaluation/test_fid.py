"""FID Inception parity with a torch reference in pytorch-fid's layout; FID vs numpy/scipy; offline error."""
import numpy as np
import pytest
from scipy import linalg

torch = pytest.importorskip("torch")

from spade_jax.evaluation import fid as fid_lib
from spade_jax.evaluation.inception import FIDInceptionV3, convert_fid_inception, load_fid_inception
from spade_jax.weights import download
from tests.evaluation.torch_refs import TorchFIDInception, randomize


def _reference_fid(mu1, s1, mu2, s2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, restated with numpy/scipy."""
  diff = mu1 - mu2
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    off = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
  covmean = covmean.real
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.fixture(scope="module")
def torch_inception(tmp_path_factory):
  torch.manual_seed(0)
  model = TorchFIDInception()
  randomize(model)
  path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
  torch.save(model.state_dict(), path)
  return model, path


def test_inception_pool_features_match_torch(torch_inception):
  model, path = torch_inception
  sd = torch.load(path)
  assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in sd and sd["fc.weight"].shape == (1008, 2048)
  imgs = torch.from_numpy(np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32))
  with torch.no_grad():
    ref = model(imgs).numpy()
  jmodel, variables = load_fid_inception(path)  # via spade_jax.weights.pth, as for the real file
  got = np.asarray(jmodel.apply(variables, imgs.numpy().transpose(0, 2, 3, 1)))
  assert got.shape == (2, 2048)
  assert np.abs(ref).max() > 0.1  # O(1) features, not vanished
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_converter_rejects_wrong_layout(torch_inception):
  _, path = torch_inception
  sd = {k: v.numpy() for k, v in torch.load(path).items()}
  sd.pop("Mixed_6b.branch_pool.conv.weight")
  with pytest.raises(ValueError, match="missing"):
    convert_fid_inception(sd)
  sd = {k: v.numpy() for k, v in torch.load(path).items()}
  sd["fc.weight"] = sd["fc.weight"][:1000]  # a torchvision ImageNet (1000-class) Inception
  with pytest.raises(ValueError, match="fc.weight"):
    convert_fid_inception(sd)


def _feature_sets(n1, n2, d, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d)) * 0.3
  b = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.2
  return a.astype(np.float32), b.astype(np.float32)


def test_fid_matches_numpy_reference():
  a, b = _feature_sets(300, 250, 64)
  mu1, s1 = np.mean(a.astype(np.float64), 0), np.cov(a.astype(np.float64), rowvar=False)
  mu2, s2 = np.mean(b.astype(np.float64), 0), np.cov(b.astype(np.float64), rowvar=False)
  ref = _reference_fid(mu1, s1, mu2, s2)
  got = fid_lib.frechet_distance(*fid_lib.statistics(a), *fid_lib.statistics(b))
  assert ref > 1
  assert abs(got - ref) <= 1e-6 * abs(ref)
  assert abs(fid_lib.frechet_distance(mu1, s1, mu1, s1)) < 1e-6  # identical sets
  # streaming float64 stats over uneven batches equal np.mean / np.cov
  st = fid_lib.FeatureStats()
  for lo, hi in ((0, 7), (7, 8), (8, 150), (150, 300)):
    st.update(a[lo:hi])
  mu, sigma = st.mu_sigma()
  np.testing.assert_allclose(mu, mu1, rtol=0, atol=1e-12)
  np.testing.assert_allclose(sigma, s1, rtol=1e-10, atol=1e-12)


def test_fid_singular_covariances_rank_deficient():
  # fewer samples than dimensions (like 500 Cityscapes images vs 2048-d): rank-deficient covariances
  a, b = _feature_sets(20, 30, 64, seed=3)
  s = [fid_lib.statistics(a), fid_lib.statistics(b)]
  ref = _reference_fid(*s[0], *s[1])
  got = fid_lib.frechet_distance(*s[0], *s[1])
  assert np.isfinite(got) and abs(got - ref) <= 1e-6 * abs(ref)


def test_fid_singular_fallback_adds_eps(monkeypatch):
  calls = []
  real = linalg.sqrtm

  def flaky(m):
    calls.append(m)
    return np.full_like(m, np.nan) if len(calls) == 1 else real(m)

  monkeypatch.setattr(fid_lib.linalg, "sqrtm", flaky)
  mu, s = np.zeros(3), np.diag([1.0, 2.0, 0.0])
  with pytest.warns(RuntimeWarning, match="singular product"):
    d = fid_lib.frechet_distance(mu, s, mu, s, eps=1e-6)
  np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(3)) @ (s + 1e-6 * np.eye(3)))
  assert abs(d - (3.0 + 3.0 - 2 * (3.0 + 3e-6))) < 1e-9  # traces of the un-offset covariances


def test_fid_complex_component_raises(monkeypatch):
  monkeypatch.setattr(fid_lib.linalg, "sqrtm", lambda m: np.eye(2) * (1 + 0.1j))
  with pytest.raises(ValueError, match="Imaginary component"):
    fid_lib.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
  monkeypatch.setattr(fid_lib.linalg, "sqrtm", lambda m: np.eye(2) * (1 + 1e-5j))
  assert abs(fid_lib.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))) < 1e-12


def test_stats_cache_roundtrip(tmp_path):
  mu, sigma = np.arange(3.0), np.eye(3)
  p = tmp_path / "real_stats.npz"
  fid_lib.save_stats(p, mu, sigma, dataset="cityscapes", size="256x512")
  got = fid_lib.load_stats(p, dataset="cityscapes", size="256x512")
  np.testing.assert_array_equal(got[0], mu) and np.testing.assert_array_equal(got[1], sigma)
  assert fid_lib.load_stats(p, dataset="cityscapes", size="256x256") is None
  assert fid_lib.load_stats(tmp_path / "none.npz") is None


def test_offline_error_names_url_and_path(tmp_path, monkeypatch):
  monkeypatch.setenv("SPADE_JAX_CACHE", str(tmp_path))
  url = "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth"
  monkeypatch.setitem(download.PRETRAINED, "fid_inception",
                      download.Pretrained(url, "pt_inception-2015-12-05-6726825d.pth", "6726825d"))
  with pytest.raises(download.WeightsUnavailableError) as e:
    load_fid_inception(progress=False)
  msg = str(e.value)
  assert url in msg and str(tmp_path / "pt_inception-2015-12-05-6726825d.pth") in msg


def test_uint8_feature_extractor_scales_like_totensor():
  # tiny smoke of the jitted extractor's input scaling with a stub model
  class Stub:
    def apply(self, variables, x):
      return x.reshape(x.shape[0], -1)
  ext = fid_lib.feature_extractor(Stub(), {})
  img = np.array([[[[0, 255, 51]]]], np.uint8)
  np.testing.assert_allclose(np.asarray(ext(img)), [[0.0, 1.0, 0.2]], atol=1e-7)
  assert FIDInceptionV3().resize_input
