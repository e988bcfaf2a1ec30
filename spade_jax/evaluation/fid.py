"""FID exactly as pytorch-fid computes it: pool3 features of the FID Inception, float64 statistics, Frechet distance.

  model, variables = load_fid_inception()                # pytorch-fid weights, converted
  extract = feature_extractor(model, variables)          # jitted: uint8 or [0, 1] float NHWC -> (N, 2048) float32
  stats = FeatureStats(); stats.update(extract(batch))   # float64 running mean / covariance, any batch split
  fid = frechet_distance(*stats.mu_sigma(), *real_mu_sigma)

`frechet_distance` is pytorch-fid's `calculate_frechet_distance`: scipy.linalg.sqrtm of sigma1 @ sigma2; if that is
not finite, eps * I is added to both covariances and it is retried; a complex result is kept as its real part when
the imaginary parts of its diagonal are within 1e-3 of zero, else ValueError. With fewer samples than 2048 (e.g. 500
Cityscapes images) the covariances are singular and the fallback can trigger.
"""
from __future__ import annotations

import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

__all__ = ["FeatureStats", "statistics", "frechet_distance", "feature_extractor", "save_stats", "load_stats"]


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) in float64 as pytorch-fid: mean over samples, np.cov(rowvar=False) (unbiased, N - 1)."""
  act = np.asarray(features, np.float64)
  if act.ndim != 2 or act.shape[0] < 2:
    raise ValueError(f"need (N >= 2, D) features, got shape {act.shape}")
  return np.mean(act, axis=0), np.cov(act, rowvar=False)


class FeatureStats:
  """Streaming float64 mean and unbiased covariance (Chan et al. merge of per-batch moments); equals np.cov."""

  def __init__(self, dim: int | None = None):
    self.n, self.mean, self.m2 = 0, None, None
    if dim is not None:
      self.mean, self.m2 = np.zeros(dim), np.zeros((dim, dim))

  def update(self, features) -> None:
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features must be (N, D), got {x.shape}")
    nb = x.shape[0]
    if nb == 0:
      return
    mb = x.mean(axis=0)
    xc = x - mb
    m2b = xc.T @ xc
    if self.n == 0:
      self.n, self.mean, self.m2 = nb, mb, m2b
      return
    n = self.n + nb
    delta = mb - self.mean
    self.mean = self.mean + delta * (nb / n)
    self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
    self.n = n

  def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
    if self.n < 2:
      raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
    return self.mean.copy(), self.m2 / (self.n - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2)), with pytorch-fid's singular / complex handling."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape:
    raise ValueError(f"covariances have different dimensions: {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
                  RuntimeWarning, stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_extractor(model, variables):
  """Jitted images -> pool3 features. uint8 images are scaled by 1/255 (ToTensor); floats must be in [0, 1]."""
  @jax.jit
  def run(variables, images):
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    return model.apply(variables, x)

  return lambda images: run(variables, jnp.asarray(images))


def save_stats(path, mu, sigma, **meta) -> None:
  """Cache (mu, sigma) and protocol metadata (strings / numbers) in an .npz, written atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.part.npz")  # several processes may write the same statistics
  np.savez(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
           **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
  tmp.replace(path)


def load_stats(path, **expect_meta):
  """(mu, sigma) from `save_stats`; None when the file is missing or its metadata differs from `expect_meta`."""
  path = pathlib.Path(path)
  if not path.is_file():
    return None
  with np.load(path) as f:
    for k, v in expect_meta.items():
      if f"meta_{k}" not in f or str(f[f"meta_{k}"]) != str(np.asarray(v)):
        return None
    return f["mu"], f["sigma"]
