"""PyTorch reference networks for the SPADE/GauGAN parity tests and benchmarks (torch: the test extra, never a
runtime dependency).

Written from a behavioural description of the official model (not from the official source).
Module and attribute names are chosen so that ``state_dict()`` keys, their order and their shapes equal those of the
official NVlabs/SPADE checkpoints (see ``docs/official_state_dict_keys.txt``).

Notes on stand-ins:
- ``param_free_norm='syncbatch'`` uses a plain ``nn.BatchNorm2d(affine=False)``: on a single process SyncBN
  reduces to ``F.batch_norm`` (batch stats in train mode, running stats in eval mode, momentum 0.1, eps 1e-5).
- Spectral norm uses the legacy hook API ``torch.nn.utils.spectral_norm`` (keys ``weight_orig``/``weight_u``/
  ``weight_v``; one power iteration per training-mode forward, none in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

__all__ = [
  "SPADE",
  "SPADEResnetBlock",
  "SPADEGenerator",
  "NLayerDiscriminator",
  "MultiscaleDiscriminator",
  "ConvEncoder",
  "VGG19Features",
  "hinge_d_real",
  "hinge_d_fake",
  "hinge_g",
  "feature_matching",
  "vgg_loss",
  "kld",
  "xavier_init_",
  "train_steps_",
  "latent_grid_size",
  "LRELU_SLOPE",
]

LRELU_SLOPE = 0.2


def _maybe_sn(module: nn.Module, use_sn: bool) -> nn.Module:
  return spectral_norm(module) if use_sn else module


# ---------------------------------------------------------------------------------------------------------------
# SPADE layer and residual block
# ---------------------------------------------------------------------------------------------------------------


class SPADE(nn.Module):
  """Spatially-adaptive denormalisation: ``norm(x) * (1 + gamma(seg)) + beta(seg)``."""

  NHIDDEN = 128

  def __init__(self, norm_nc: int, label_nc: int, param_free_norm: str = "syncbatch", ks: int = 3):
    super().__init__()
    if param_free_norm in ("syncbatch", "batch"):
      self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
    elif param_free_norm == "instance":
      self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
    else:
      raise ValueError(f"unknown param-free norm {param_free_norm!r}")
    pw = ks // 2
    self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, self.NHIDDEN, ks, padding=pw), nn.ReLU())
    self.mlp_gamma = nn.Conv2d(self.NHIDDEN, norm_nc, ks, padding=pw)
    self.mlp_beta = nn.Conv2d(self.NHIDDEN, norm_nc, ks, padding=pw)

  def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
    normalized = self.param_free_norm(x)
    seg = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
    actv = self.mlp_shared(seg)
    gamma = self.mlp_gamma(actv)
    beta = self.mlp_beta(actv)
    return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
  """Pre-activation residual block: SPADE -> LReLU(0.2) -> conv, twice; learned 1x1 shortcut when fin != fout."""

  def __init__(
    self,
    fin: int,
    fout: int,
    semantic_nc: int,
    spectral: bool = True,
    param_free_norm: str = "syncbatch",
    ks: int = 3,
  ):
    super().__init__()
    self.learned_shortcut = fin != fout
    fmiddle = min(fin, fout)
    # registration order: conv_0, conv_1, [conv_s], norm_0, norm_1, [norm_s]
    self.conv_0 = _maybe_sn(nn.Conv2d(fin, fmiddle, 3, padding=1), spectral)
    self.conv_1 = _maybe_sn(nn.Conv2d(fmiddle, fout, 3, padding=1), spectral)
    if self.learned_shortcut:
      self.conv_s = _maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)
    self.norm_0 = SPADE(fin, semantic_nc, param_free_norm, ks)
    self.norm_1 = SPADE(fmiddle, semantic_nc, param_free_norm, ks)
    if self.learned_shortcut:
      self.norm_s = SPADE(fin, semantic_nc, param_free_norm, ks)

  def shortcut(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    if self.learned_shortcut:
      return self.conv_s(self.norm_s(x, seg))
    return x

  def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    x_s = self.shortcut(x, seg)
    dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
    dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
    return x_s + dx


# ---------------------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------------------

_N_UP = {"normal": 5, "more": 6, "most": 7}


def latent_grid_size(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
  """(sh, sw) of the generator's first feature map: sw = crop // 2**n_up, sh = round(sw / aspect_ratio)."""
  if num_upsampling_layers not in _N_UP:
    raise ValueError(f"num_upsampling_layers must be one of {sorted(_N_UP)}, got {num_upsampling_layers!r}")
  sw = crop_size // (2 ** _N_UP[num_upsampling_layers])
  sh = round(sw / aspect_ratio)
  return sh, sw


class SPADEGenerator(nn.Module):
  def __init__(
    self,
    semantic_nc: int,
    ngf: int = 64,
    num_upsampling_layers: str = "normal",
    crop_size: int = 256,
    aspect_ratio: float = 1.0,
    use_vae: bool = False,
    z_dim: int = 256,
    param_free_norm: str = "syncbatch",
    spectral: bool = True,
  ):
    super().__init__()
    nf = ngf
    self.ngf = ngf
    self.semantic_nc = semantic_nc
    self.num_upsampling_layers = num_upsampling_layers
    self.use_vae = use_vae
    self.z_dim = z_dim
    self.sh, self.sw = latent_grid_size(crop_size, aspect_ratio, num_upsampling_layers)

    if use_vae:
      self.fc = nn.Linear(z_dim, 16 * nf * self.sh * self.sw)
    else:
      self.fc = nn.Conv2d(semantic_nc, 16 * nf, 3, padding=1)

    def blk(fin, fout):
      return SPADEResnetBlock(fin, fout, semantic_nc, spectral=spectral, param_free_norm=param_free_norm)

    self.head_0 = blk(16 * nf, 16 * nf)
    self.G_middle_0 = blk(16 * nf, 16 * nf)
    self.G_middle_1 = blk(16 * nf, 16 * nf)
    self.up_0 = blk(16 * nf, 8 * nf)
    self.up_1 = blk(8 * nf, 4 * nf)
    self.up_2 = blk(4 * nf, 2 * nf)
    self.up_3 = blk(2 * nf, 1 * nf)
    final_nc = nf
    if num_upsampling_layers == "most":
      self.up_4 = blk(1 * nf, nf // 2)
      final_nc = nf // 2
    self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
    self.up = nn.Upsample(scale_factor=2)

  def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    if self.use_vae:
      if z is None:
        raise ValueError("reference SPADEGenerator(use_vae=True) needs an explicit z of shape (B, z_dim)")
      x = self.fc(z)
      x = x.view(-1, 16 * self.ngf, self.sh, self.sw)
    else:
      x = F.interpolate(seg, size=(self.sh, self.sw), mode="nearest")
      x = self.fc(x)

    x = self.head_0(x, seg)
    x = self.up(x)
    x = self.G_middle_0(x, seg)
    if self.num_upsampling_layers in ("more", "most"):
      x = self.up(x)
    x = self.G_middle_1(x, seg)

    for blk in (self.up_0, self.up_1, self.up_2, self.up_3):
      x = self.up(x)
      x = blk(x, seg)
    if self.num_upsampling_layers == "most":
      x = self.up(x)
      x = self.up_4(x, seg)

    x = self.conv_img(F.leaky_relu(x, LRELU_SLOPE))
    return torch.tanh(x)


# ---------------------------------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
  """PatchGAN with groups model0..model{n_layers_D}; forward returns every group's output (last = logits)."""

  def __init__(self, input_nc: int, ndf: int = 64, n_layers_D: int = 4, spectral: bool = True,
               norm: str = "instance"):
    super().__init__()
    self.n_layers_D = n_layers_D
    kw = 4
    padw = int(math.ceil((kw - 1.0) / 2))  # 2
    nf = ndf
    groups: list[list[nn.Module]] = [[nn.Conv2d(input_nc, nf, kw, stride=2, padding=padw), nn.LeakyReLU(LRELU_SLOPE)]]
    for n in range(1, n_layers_D):
      nf_prev = nf
      nf = min(nf * 2, 512)
      stride = 1 if n == n_layers_D - 1 else 2
      # norm_D 'spectralinstance': Sequential(conv without bias, IN); 'spectral': the conv alone, with its bias
      conv = _maybe_sn(nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=padw, bias=norm == "none"), spectral)
      normed = nn.Sequential(conv, nn.InstanceNorm2d(nf, affine=False)) if norm == "instance" else conv
      groups.append([normed, nn.LeakyReLU(LRELU_SLOPE)])
    groups.append([nn.Conv2d(nf, 1, kw, stride=1, padding=padw)])
    for n, g in enumerate(groups):
      self.add_module(f"model{n}", nn.Sequential(*g))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    feats = []
    for n in range(self.n_layers_D + 1):
      x = getattr(self, f"model{n}")(x)
      feats.append(x)
    return feats


class MultiscaleDiscriminator(nn.Module):
  """num_D NLayerDiscriminators on successively avg-pooled inputs; returns a list (per scale) of feature lists."""

  def __init__(self, input_nc: int, num_D: int = 2, ndf: int = 64, n_layers_D: int = 4, spectral: bool = True,
               norm: str = "instance"):
    super().__init__()
    self.num_D = num_D
    for i in range(num_D):
      self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers_D, spectral, norm))

  @staticmethod
  def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

  def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
    out = []
    for i in range(self.num_D):
      out.append(getattr(self, f"discriminator_{i}")(x))
      x = self.downsample(x)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Encoder (VAE)
# ---------------------------------------------------------------------------------------------------------------


class ConvEncoder(nn.Module):
  """Style encoder: (SN conv k3 s2 p1 no bias + IN) x 6, LReLU between and after, then fc_mu / fc_var.

  ``input_size`` replaces the official hard-coded 256 (inputs of another size are bilinearly resized to
  input_size x input_size, align_corners=False); fc input width is 8*ngf*s*s with s = input_size // 64.
  input_size must be a multiple of 64 and >= 128 (64 would leave a 1x1 map at layer6, which torch's
  InstanceNorm rejects); use input_size=128 for tiny tests.
  """

  def __init__(self, ngf: int = 64, crop_size: int = 256, input_size: int = 256, spectral: bool = True,
               norm: str = "instance"):
    super().__init__()
    if input_size % 64 != 0 or input_size < 128:
      # six stride-2 convs: input_size//64 must be the final map size, and torch's InstanceNorm refuses a
      # 1x1 map (input_size 64 gives 1x1 after layer6), so the smallest usable size is 128 (2x2 at layer6).
      raise ValueError(f"ConvEncoder input_size must be a multiple of 64 and >= 128, got {input_size}")
    ndf = ngf
    self.input_size = input_size
    kw, pw = 3, 1

    def layer(cin, cout):  # norm_E 'spectralinstance' (no conv bias) or 'spectral' (bias, no norm)
      conv = _maybe_sn(nn.Conv2d(cin, cout, kw, stride=2, padding=pw, bias=norm == "none"), spectral)
      return nn.Sequential(conv, nn.InstanceNorm2d(cout, affine=False) if norm == "instance" else nn.Identity())

    self.layer1 = layer(3, ndf)
    self.layer2 = layer(ndf, ndf * 2)
    self.layer3 = layer(ndf * 2, ndf * 4)
    self.layer4 = layer(ndf * 4, ndf * 8)
    self.layer5 = layer(ndf * 8, ndf * 8)
    self.has_layer6 = crop_size >= 256
    if self.has_layer6:
      self.layer6 = layer(ndf * 8, ndf * 8)
    s = input_size // 64
    self.so = s
    self.fc_mu = nn.Linear(ndf * 8 * s * s, 256)
    self.fc_var = nn.Linear(ndf * 8 * s * s, 256)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.size(2) != self.input_size or x.size(3) != self.input_size:
      x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
    x = self.layer1(x)
    x = self.layer2(F.leaky_relu(x, LRELU_SLOPE))
    x = self.layer3(F.leaky_relu(x, LRELU_SLOPE))
    x = self.layer4(F.leaky_relu(x, LRELU_SLOPE))
    x = self.layer5(F.leaky_relu(x, LRELU_SLOPE))
    if self.has_layer6:
      x = self.layer6(F.leaky_relu(x, LRELU_SLOPE))
    x = F.leaky_relu(x, LRELU_SLOPE)
    x = x.reshape(x.size(0), -1)
    return self.fc_mu(x), self.fc_var(x)


# ---------------------------------------------------------------------------------------------------------------
# VGG19 feature extractor (torchvision-compatible keys features.{i}.weight/bias, up to relu5_1)
# ---------------------------------------------------------------------------------------------------------------

# torchvision vgg19 "E" config up to conv5_1; "M" = 2x2 max pool.
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
VGG19_SLICE_BOUNDS = (0, 2, 7, 12, 21, 30)


class VGG19Features(nn.Module):
  """``features[0:30]`` of torchvision's vgg19; forward -> [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]."""

  def __init__(self):
    super().__init__()
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
        cin = v
    assert len(layers) == 30
    self.features = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    b = VGG19_SLICE_BOUNDS
    for k in range(5):
      for i in range(b[k], b[k + 1]):
        x = self.features[i](x)
      outs.append(x)
    return outs


# ---------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------


def _last_per_scale(pred_list) -> list[torch.Tensor]:
  if isinstance(pred_list, torch.Tensor):
    return [pred_list]
  return [p[-1] if isinstance(p, (list, tuple)) else p for p in pred_list]


def _multiscale(pred_list, per_scale) -> torch.Tensor:
  preds = _last_per_scale(pred_list)
  loss = 0
  for p in preds:
    loss = loss + per_scale(p)
  return loss / len(preds)


def hinge_d_real(pred_list) -> torch.Tensor:
  """mean(relu(1 - x)) per scale (on the last output), averaged over scales."""
  return _multiscale(pred_list, lambda x: -torch.mean(torch.minimum(x - 1, torch.zeros_like(x))))


def hinge_d_fake(pred_list) -> torch.Tensor:
  """mean(relu(1 + x)) per scale (on the last output), averaged over scales."""
  return _multiscale(pred_list, lambda x: -torch.mean(torch.minimum(-x - 1, torch.zeros_like(x))))


def hinge_g(pred_list) -> torch.Tensor:
  """-mean(x) per scale (on the last output), averaged over scales."""
  return _multiscale(pred_list, lambda x: -torch.mean(x))


def feature_matching(fake_feats, real_feats, lambda_feat: float = 10.0) -> torch.Tensor:
  """sum_i sum_{j < last} L1mean(fake[i][j], real[i][j].detach()) * lambda_feat / num_D."""
  num_D = len(fake_feats)
  loss = torch.zeros((), dtype=fake_feats[0][0].dtype)
  for i in range(num_D):
    for j in range(len(fake_feats[i]) - 1):
      unweighted = F.l1_loss(fake_feats[i][j], real_feats[i][j].detach())
      loss = loss + unweighted * lambda_feat / num_D
  return loss


def vgg_loss(
  vgg: nn.Module,
  fake: torch.Tensor,
  real: torch.Tensor,
  weights: Sequence[float] = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0),
  lambda_vgg: float = 10.0,
) -> torch.Tensor:
  """lambda_vgg * sum_k w_k L1mean(vgg_k(fake), vgg_k(real).detach()); inputs go in as-is ([-1, 1])."""
  x_vgg, y_vgg = vgg(fake), vgg(real)
  loss = 0
  for k in range(len(x_vgg)):
    loss = loss + weights[k] * F.l1_loss(x_vgg[k], y_vgg[k].detach())
  return loss * lambda_vgg


def kld(mu: torch.Tensor, logvar: torch.Tensor, lambda_kld: float = 0.05) -> torch.Tensor:
  """-0.5 * sum(1 + logvar - mu^2 - exp(logvar)) * lambda_kld, summed over batch and latent dims."""
  return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * lambda_kld


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def xavier_init_(module: nn.Module, gain: float = 0.02) -> nn.Module:
  """Official init: xavier_normal_(gain) on every Conv*/Linear weight (weight_orig for SN convs), zero biases;
  affine BatchNorm weights ~ N(1, gain). SN u/v buffers are left as drawn at wrap time."""
  for m in module.modules():
    name = type(m).__name__
    if "BatchNorm2d" in name:
      if getattr(m, "weight", None) is not None:
        nn.init.normal_(m.weight, 1.0, gain)
      if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)
    elif "Conv" in name or "Linear" in name:
      w = m._parameters.get("weight_orig", None)
      if w is None:
        w = m._parameters.get("weight", None)
      if w is None:
        continue
      nn.init.xavier_normal_(w, gain=gain)
      if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)
  return module


@torch.no_grad()
def train_steps_(module: nn.Module, *inputs, n: int = 2) -> nn.Module:
  """Run ``n`` training-mode forwards under no_grad (updates SN u/v and BN running stats), then restore the
  module's previous train/eval mode."""
  was_training = module.training
  module.train()
  for _ in range(n):
    module(*inputs)
  module.train(was_training)
  return module
