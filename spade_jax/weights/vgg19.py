"""torchvision's ImageNet VGG19 (`vgg19-dcbb9e9d.pth`) -> our VGG19 params, for the perceptual loss."""
from __future__ import annotations

from pathlib import Path

from spade_jax.models.vgg import VGG19_CONVS
from spade_jax.weights import download, official, pth

_USED = {f"features.{i}.{p}" for i, _, _ in VGG19_CONVS for p in ("weight", "bias")}


def vgg19_params(state_dict) -> dict:
  """Keep the convs up to conv5_1 (the loss never reaches later layers or the classifier)."""
  missing = sorted(_USED - set(state_dict))
  if missing:
    raise official.ConversionError(f"not a torchvision VGG19 state dict: missing {missing[:6]}")
  return official.torch_to_variables({k: state_dict[k] for k in state_dict if k in _USED}, "vgg19")["params"]


def load_vgg19(path: str | Path | None = None, *, progress: bool = True) -> dict:
  """Params from `path`, or from the download cache (fetched once when online). Offline without the file this
  raises WeightsUnavailableError naming the URL and the path to place it at; to train without VGG weights, set
  `--config.loss.lambda_vgg=0` (the loss is then disabled explicitly, never silently with random weights)."""
  path = Path(path) if path else download.fetch("vgg19", progress=progress)
  if not path.exists():
    raise FileNotFoundError(f"VGG19 weights not found at {path} (config.loss.vgg_weights)")
  return vgg19_params(pth.load_state_dict(path))
