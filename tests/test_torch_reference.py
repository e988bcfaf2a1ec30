"""Self-checks of the PyTorch reference networks (spade_jax/testing/torch_reference.py) used as the parity oracle.

(a) state_dict keys, order and shapes equal the documented official ones (docs/official_state_dict_keys.txt);
(b) trainable parameter counts equal the documented totals; (c) small functional sanity checks of the spec rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from spade_jax.testing import torch_reference as ref

KEYS_FILE = Path(__file__).resolve().parents[1] / "docs" / "official_state_dict_keys.txt"
_LINE = re.compile(r"^(\S+)\s+\[([0-9,\s]*)\]\s+(\S.*)$")


# ---------------------------------------------------------------------------------------------------------------
# keys file
# ---------------------------------------------------------------------------------------------------------------


def _parse_keys_file(path: Path) -> dict[str, list[tuple[str, tuple[int, ...], bool]]]:
  """{section header: [(key, shape, may_be_absent), ...]} in file order."""
  sections: dict[str, list] = {}
  current = None
  for raw in path.read_text().splitlines():
    line = raw.strip()
    if not line or line.startswith("#"):
      continue
    if line.startswith("==="):
      current = line.strip("= ").strip()
      sections[current] = []
      continue
    m = _LINE.match(line)
    if m is None or current is None:
      raise ValueError(f"unparsable line in {path}: {raw!r}")
    key, dims, note = m.groups()
    shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
    sections[current].append((key, shape, "may be absent" in note))
  return sections


@pytest.fixture(scope="module")
def key_sections():
  return _parse_keys_file(KEYS_FILE)


def _section(sections, *must_contain):
  hits = [v for k, v in sections.items() if all(s in k for s in must_contain)]
  assert len(hits) == 1, f"expected one section matching {must_contain}, got {len(hits)}: {list(sections)}"
  return hits[0]


def _assert_state_dict_matches(module, expected):
  sd = module.state_dict()
  got = [(k, tuple(v.shape)) for k, v in sd.items()]
  got_keys = [k for k, _ in got]
  optional = {k for k, _, opt in expected if opt}
  exp = [(k, s) for k, s, opt in expected if not (opt and k not in sd)]
  exp_keys = [k for k, _ in exp]
  missing = sorted(set(exp_keys) - set(got_keys))
  unexpected = sorted(set(got_keys) - set(exp_keys) - optional)
  assert not missing and not unexpected, f"missing={missing[:10]} unexpected={unexpected[:10]}"
  assert got_keys == exp_keys, "state_dict key order differs from the official registration order"
  bad = [(k, g, e) for (k, g), (_, e) in zip(got, exp) if g != e]
  assert not bad, f"shape mismatches (key, got, expected): {bad[:10]}"


def test_keys_file_sections_have_documented_sizes(key_sections):
  sizes = {k: len(v) for k, v in key_sections.items()}
  assert len(_section(key_sections, "netG", "use_vae=False")) == 234, sizes
  assert len(_section(key_sections, "netG", "use_vae=True")) == 2, sizes
  assert len(_section(key_sections, "netG", "most")) == 40, sizes
  assert len(_section(key_sections, "netD")) == 26, sizes
  assert len(_section(key_sections, "netE")) == 22, sizes


def test_generator_keys_coco_normal(key_sections):
  expected = _section(key_sections, "netG", "use_vae=False")
  _assert_state_dict_matches(ref.SPADEGenerator(184), expected)


def test_generator_keys_more_equal_normal(key_sections):
  # num_upsampling_layers 'more' has the identical key set (only sh/sw change, which no shape depends on).
  expected = _section(key_sections, "netG", "use_vae=False")
  with torch.device("meta"):
    g = ref.SPADEGenerator(184, num_upsampling_layers="more", crop_size=512, aspect_ratio=2.0)
  _assert_state_dict_matches(g, expected)


def test_generator_keys_vae(key_sections):
  base = _section(key_sections, "netG", "use_vae=False")
  fc = {k: (k, s, o) for k, s, o in _section(key_sections, "netG", "use_vae=True")}
  assert set(fc) == {"fc.weight", "fc.bias"}
  expected = [fc.get(k, (k, s, o)) for k, s, o in base]
  _assert_state_dict_matches(ref.SPADEGenerator(184, use_vae=True), expected)


def test_generator_keys_most(key_sections):
  base = _section(key_sections, "netG", "use_vae=False")
  extra = _section(key_sections, "netG", "most")
  expected = [e for e in base if not e[0].startswith("conv_img.")] + list(extra)
  _assert_state_dict_matches(ref.SPADEGenerator(184, num_upsampling_layers="most"), expected)


def test_discriminator_keys(key_sections):
  _assert_state_dict_matches(ref.MultiscaleDiscriminator(187), _section(key_sections, "netD"))


def test_encoder_keys(key_sections):
  _assert_state_dict_matches(ref.ConvEncoder(), _section(key_sections, "netE"))


def test_generator_buffer_counts():
  g = ref.SPADEGenerator(184)
  params = dict(g.named_parameters())
  buffers = dict(g.named_buffers())
  assert (len(params), len(buffers)) == (144, 90)
  g_in = ref.SPADEGenerator(184, param_free_norm="instance")
  assert not any("param_free_norm" in k for k in g_in.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# parameter counts (meta device: no memory, no init cost)
# ---------------------------------------------------------------------------------------------------------------


def _n_trainable(module) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


DATASETS = {  # name: (semantic_nc, generator kwargs)
  "coco": (184, {}),
  "ade20k": (151, {}),
  "cityscapes": (36, dict(num_upsampling_layers="more", crop_size=512, aspect_ratio=2.0)),
}


@pytest.mark.parametrize(
  "name,use_vae,expected",
  [
    ("coco", False, 97_480_899),
    ("ade20k", False, 96_492_483),
    ("cityscapes", False, 93_048_003),
    ("coco", True, 112_626_883),
    ("ade20k", True, 111_942_595),
    ("cityscapes", True, 101_136_579),
  ],
)
def test_generator_param_count(name, use_vae, expected):
  s, kw = DATASETS[name]
  with torch.device("meta"):
    g = ref.SPADEGenerator(s, use_vae=use_vae, **kw)
  assert _n_trainable(g) == expected


@pytest.mark.parametrize("name,expected", [("coco", 5_904_514), ("ade20k", 5_836_930), ("cityscapes", 5_601_410)])
def test_discriminator_param_count(name, expected):
  s, _ = DATASETS[name]
  assert _n_trainable(ref.MultiscaleDiscriminator(s + 3)) == expected


def test_encoder_param_count():
  assert _n_trainable(ref.ConvEncoder()) == 10_463_424


# ---------------------------------------------------------------------------------------------------------------
# functional sanity (tiny sizes)
# ---------------------------------------------------------------------------------------------------------------


def _onehot(b, nc, h, w, seed=0):
  g = torch.Generator().manual_seed(seed)
  lab = torch.randint(0, nc, (b, 1, h, w), generator=g)
  return torch.zeros(b, nc, h, w).scatter_(1, lab, 1.0)


def test_nearest_resize_picks_top_left():
  seg = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
  for f in (2, 4, 8):
    out = F.interpolate(seg, size=(16 // f, 16 // f), mode="nearest")
    torch.testing.assert_close(out, seg[:, :, ::f, ::f], rtol=0, atol=0)
  torch.testing.assert_close(
    ref.SPADEGenerator(3, ngf=2, crop_size=32).up(seg),
    seg.repeat_interleave(2, 2).repeat_interleave(2, 3),
    rtol=0,
    atol=0,
  )


@pytest.mark.parametrize("pfn", ["batch", "syncbatch", "instance"])
def test_spade_identity_when_gamma_beta_zero(pfn):
  torch.manual_seed(0)
  m = ref.SPADE(6, 5, param_free_norm=pfn)
  for conv in (m.mlp_gamma, m.mlp_beta):
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
  x = torch.randn(2, 6, 8, 8)
  out = m(x, _onehot(2, 5, 32, 32))
  torch.testing.assert_close(out, m.param_free_norm(x))
  # (1 + gamma): a constant gamma bias g scales the normalised input by (1 + g)
  torch.nn.init.constant_(m.mlp_gamma.bias, 0.5)
  torch.nn.init.constant_(m.mlp_beta.bias, -0.25)
  torch.testing.assert_close(m(x, _onehot(2, 5, 32, 32)), m.param_free_norm(x) * 1.5 - 0.25)


def test_resblock_structure():
  blk = ref.SPADEResnetBlock(8, 4, 5)
  assert blk.learned_shortcut and blk.conv_s.bias is None
  assert [n for n, _ in blk.named_children()] == ["conv_0", "conv_1", "conv_s", "norm_0", "norm_1", "norm_s"]
  assert tuple(blk.conv_0.weight_orig.shape) == (4, 8, 3, 3) and blk.norm_1.mlp_gamma.out_channels == 4
  same = ref.SPADEResnetBlock(8, 8, 5, spectral=False)
  assert not same.learned_shortcut and not hasattr(same, "conv_s") and "conv_0.weight" in same.state_dict()
  x, seg = torch.randn(2, 8, 4, 4), _onehot(2, 5, 16, 16)
  assert blk(x, seg).shape == (2, 4, 4, 4)


@pytest.mark.parametrize(
  "mode,crop,ar,out_hw",
  [("normal", 64, 1.0, (64, 64)), ("more", 128, 2.0, (64, 128)), ("most", 128, 1.0, (128, 128))],
)
def test_generator_forward_shapes(mode, crop, ar, out_hw):
  torch.manual_seed(0)
  g = ref.xavier_init_(ref.SPADEGenerator(5, ngf=4, num_upsampling_layers=mode, crop_size=crop, aspect_ratio=ar))
  seg = _onehot(2, 5, *out_hw)
  ref.train_steps_(g, seg, n=1)
  assert g.training  # train_steps_ restores the previous mode
  g.eval()
  with torch.no_grad():
    y = g(seg)
  assert y.shape == (2, 3, *out_hw)
  assert float(y.abs().max()) <= 1.0


def test_generator_vae_requires_z():
  torch.manual_seed(0)
  g = ref.SPADEGenerator(5, ngf=4, crop_size=64, use_vae=True, z_dim=16)
  assert tuple(g.fc.weight.shape) == (16 * 4 * 2 * 2, 16)
  seg = _onehot(2, 5, 64, 64)
  with pytest.raises(ValueError):
    g(seg)
  with torch.no_grad():
    assert g(seg, torch.randn(2, 16)).shape == (2, 3, 64, 64)


def test_latent_grid_size():
  assert ref.latent_grid_size(256, 1.0, "normal") == (8, 8)
  assert ref.latent_grid_size(512, 2.0, "more") == (4, 8)
  assert ref.latent_grid_size(256, 1.0, "most") == (2, 2)


def test_discriminator_output_sizes():
  d = ref.MultiscaleDiscriminator(4, ndf=4)
  with torch.no_grad():
    out = d(torch.randn(1, 4, 256, 256))
    city = d(torch.randn(1, 4, 256, 512))
  assert len(out) == 2 and all(len(o) == 5 for o in out)
  assert [o.shape[-1] for o in out[0]] == [129, 65, 33, 34, 35]
  assert [o.shape[-1] for o in out[1]] == [65, 33, 17, 18, 19]
  assert [tuple(o.shape[-2:]) for o in city[0]] == [(129, 257), (65, 129), (33, 65), (34, 66), (35, 67)]
  assert [o.shape[1] for o in out[0]] == [4, 8, 16, 32, 1]
  # avg pool between scales excludes the padding from the count
  x = torch.ones(1, 1, 5, 5)
  torch.testing.assert_close(d.downsample(x), torch.ones(1, 1, 3, 3))


def test_encoder_small_input_size():
  torch.manual_seed(0)
  e = ref.ConvEncoder(ngf=4, input_size=128)
  assert tuple(e.fc_mu.weight.shape) == (256, 4 * 8 * 2 * 2)
  ref.train_steps_(e, torch.randn(2, 3, 128, 128))
  e.eval()
  x = torch.randn(2, 3, 96, 80)
  with torch.no_grad():
    mu, logvar = e(x)
    mu2, _ = e(F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False))
  assert mu.shape == logvar.shape == (2, 256)
  torch.testing.assert_close(mu, mu2)


def test_vgg_features_keys_and_shapes():
  vgg = ref.VGG19Features()
  idx = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
  assert list(vgg.state_dict()) == [f"features.{i}.{p}" for i in idx for p in ("weight", "bias")]
  assert [type(vgg.features[i]).__name__ for i in (4, 9, 18, 27)] == ["MaxPool2d"] * 4
  with torch.no_grad():
    feats = vgg(torch.randn(1, 3, 32, 32))
  assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
  assert all(float(f.min()) >= 0 for f in feats)  # each slice ends with a ReLU


def test_hinge_losses():
  a, b = torch.tensor([[-2.0, 0.5], [1.5, 3.0]]), torch.tensor([0.0, -0.5, 2.0])
  ignored = torch.full((4,), 100.0)
  preds = [[ignored, a], [ignored, b]]  # only the last element of each scale counts
  real = (torch.relu(1 - a).mean() + torch.relu(1 - b).mean()) / 2
  fake = (torch.relu(1 + a).mean() + torch.relu(1 + b).mean()) / 2
  gen = (-a.mean() - b.mean()) / 2
  torch.testing.assert_close(ref.hinge_d_real(preds), real)
  torch.testing.assert_close(ref.hinge_d_fake(preds), fake)
  torch.testing.assert_close(ref.hinge_g(preds), gen)
  torch.testing.assert_close(ref.hinge_g([a, b]), gen)


def test_feature_matching_and_kld():
  torch.manual_seed(0)
  fake = [[torch.randn(2, 3), torch.randn(4), torch.randn(5)] for _ in range(2)]
  real = [[torch.randn(2, 3), torch.randn(4), torch.randn(5)] for _ in range(2)]
  want = sum((fake[i][j] - real[i][j]).abs().mean() for i in range(2) for j in range(2)) * 10 / 2
  torch.testing.assert_close(ref.feature_matching(fake, real), want)
  mu, logvar = torch.randn(3, 7), torch.randn(3, 7)
  want = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() * 0.05
  torch.testing.assert_close(ref.kld(mu, logvar), want)
  assert float(ref.kld(torch.zeros(2, 4), torch.zeros(2, 4))) == 0.0


def test_vgg_loss_detaches_real():
  torch.manual_seed(0)
  vgg = ref.VGG19Features()
  fake = torch.randn(1, 3, 32, 32, requires_grad=True)
  real = torch.randn(1, 3, 32, 32, requires_grad=True)
  with torch.no_grad():
    assert float(ref.vgg_loss(vgg, real, real)) == 0.0
  loss = ref.vgg_loss(vgg, fake, real)
  fx, fy = vgg(fake), vgg(real)
  w = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1)
  torch.testing.assert_close(loss, 10 * sum(wk * (a - b).abs().mean() for wk, a, b in zip(w, fx, fy)))
  loss.backward()
  assert fake.grad is not None and real.grad is None


def test_xavier_init_and_train_steps():
  torch.manual_seed(0)
  g = ref.SPADEGenerator(5, ngf=4, crop_size=64)
  u0 = g.head_0.conv_0.weight_u.clone()
  ref.xavier_init_(g, gain=0.02)
  torch.testing.assert_close(g.head_0.conv_0.weight_u, u0)  # init leaves SN u/v alone
  for name, p in g.named_parameters():
    if name.endswith("bias"):
      assert float(p.detach().abs().max()) == 0.0, name
  w = g.head_0.conv_0.weight_orig  # [64, 64, 3, 3]: std = 0.02 * sqrt(2 / (fan_in + fan_out))
  expected_std = 0.02 * (2.0 / (64 * 9 + 64 * 9)) ** 0.5
  assert abs(float(w.detach().std()) / expected_std - 1) < 0.05
  g.eval()
  seg = _onehot(2, 5, 64, 64)
  ref.train_steps_(g, seg, n=2)
  assert not g.training
  bn = g.head_0.norm_0.param_free_norm
  assert int(bn.num_batches_tracked) == 2 and float((bn.running_var - 1).abs().max()) > 0
  assert not torch.equal(g.head_0.conv_0.weight_u, u0)
  u1, rv1 = g.head_0.conv_0.weight_u.clone(), bn.running_var.clone()
  with torch.no_grad():  # eval: no power iteration, running stats -> deterministic
    torch.testing.assert_close(g(seg), g(seg), rtol=0, atol=0)
  assert torch.equal(g.head_0.conv_0.weight_u, u1) and torch.equal(bn.running_var, rv1)


def test_encoder_rejects_unusable_input_size():
  for bad in (64, 100):
    with pytest.raises(ValueError):
      ref.ConvEncoder(ngf=4, input_size=bad)
