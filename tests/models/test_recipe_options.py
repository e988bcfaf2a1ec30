"""Options of the demo's recipe (not official, off by default): the colour loss, the KL's free nats, the aggregate
KL and the demo segmenter as the perceptual loss's network."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spade_jax import config as spade_config
from spade_jax import losses
from spade_jax.errors import UserError
from spade_jax.models import VGG19
from spade_jax.models.segnet import SegNet
from spade_jax.training.step import perceptual_net


def _kl_per_image(mu, logvar):
  return -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1)


def test_kld_free_nats_charges_only_each_images_excess():
  rng = np.random.default_rng(0)
  mu = rng.normal(0, 1.5, (4, 16)).astype(np.float32)
  mu[0] *= 0.1  # one image well below the allowance
  logvar = rng.normal(0, 0.3, (4, 16)).astype(np.float32)
  per_image = _kl_per_image(mu.astype(np.float64), logvar.astype(np.float64))
  free = 6.0
  assert per_image[0] < free < per_image[1:].min()
  got = losses.kld(jnp.asarray(mu), jnp.asarray(logvar), 0.05, free)
  np.testing.assert_allclose(float(got), 0.05 * np.maximum(per_image - free, 0).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(losses.kld(jnp.asarray(mu), jnp.asarray(logvar), 0.05)), 0.05 * per_image.sum(),
                             rtol=1e-5)
  g_mu, g_lv = jax.grad(lambda m, v: losses.kld(m, v, 0.05, free), argnums=(0, 1))(jnp.asarray(mu), jnp.asarray(logvar))
  assert not np.asarray(g_mu[0]).any() and not np.asarray(g_lv[0]).any()  # the image under the allowance: no pull
  np.testing.assert_allclose(np.asarray(g_mu[1:]), 0.05 * mu[1:], rtol=1e-5)  # the others: the official gradient


def test_kld_aggregate_is_the_kl_of_the_batchs_code_mixture():
  rng = np.random.default_rng(2)
  mu = rng.normal(0.5, 2.0, (6, 5)).astype(np.float32)
  logvar = rng.normal(-1.0, 0.3, (6, 5)).astype(np.float32)
  m64, v64 = mu.astype(np.float64), np.exp(logvar.astype(np.float64))
  m = m64.mean(0)  # the mixture of the six posteriors: its mean and covariance
  cov = np.diag(v64.mean(0)) + (m64 - m).T @ (m64 - m) / 6
  got = lambda a, b, fit: float(losses.kld_aggregate(jnp.asarray(a), jnp.asarray(b), 0.25, 6, fit))
  want_full = 0.5 * (np.trace(cov) + m @ m - 5 - np.linalg.slogdet(cov)[1]) * 6 * 0.25
  want_diag = 0.5 * (m ** 2 + np.diag(cov) - 1 - np.log(np.diag(cov))).sum() * 6 * 0.25
  np.testing.assert_allclose(got(mu, logvar, "full"), want_full, rtol=1e-5)
  np.testing.assert_allclose(got(mu, logvar, "diagonal"), want_diag, rtol=1e-5)
  # a spread along a direction that is no axis costs the full fit what it costs along an axis; the diagonal fit less
  q = np.linalg.qr(rng.normal(size=(5, 5)))[0].astype(np.float32)
  zero = np.zeros_like(mu)
  np.testing.assert_allclose(got(mu @ q, zero, "full"), got(mu, zero, "full"), rtol=1e-4)
  assert got(mu @ q, zero, "diagonal") != pytest.approx(got(mu, zero, "diagonal"), rel=1e-2)
  # codes at +-0.8 with posterior variance 0.36 make up the prior exactly: no aggregate cost, though each image's
  # own KL is well above zero; the same codes spread to +-2.4 with variance 1 (the demo's fallback) cost a lot
  a = np.array([[0.8], [-0.8]] * 3, np.float32)
  lv = np.full_like(a, np.log(0.36))
  for fit in ("diagonal", "full"):
    assert abs(float(losses.kld_aggregate(jnp.asarray(a), jnp.asarray(lv), 1.0, 6, fit))) < 1e-5
  assert float(losses.kld(jnp.asarray(a), jnp.asarray(lv), 1.0)) > 1.0
  wide = float(losses.kld_aggregate(jnp.asarray(3 * a), jnp.zeros_like(jnp.asarray(a)), 1.0, 6))
  np.testing.assert_allclose(wide, 0.5 * (1 + 5.76 - 1 - np.log(1 + 5.76)) * 6, rtol=1e-5)
  g_lv = jax.grad(lambda v: losses.kld_aggregate(jnp.asarray(3 * a), v, 1.0, 6))(jnp.zeros_like(jnp.asarray(a)))
  assert (np.asarray(g_lv) > 0).all()  # too wide a spread: the posteriors' variance goes down
  c = spade_config.preset("demo")
  c.loss.lambda_kld_aggregate, c.loss.kld_aggregate_start, c.loss.kld_aggregate_fit = -1.0, -5, "diag"
  with pytest.raises(UserError, match=r"loss.kld_aggregate_fit='diag' \(expected one of diagonal, full\)"
                                      r".*loss.lambda_kld_aggregate=-1.0 \(expected a number >= 0\)"
                                      r".*loss.kld_aggregate_start=-5"):
    spade_config.validate(c)


def test_colour_loss_is_l1_of_cell_means_and_only_moves_the_fake():
  rng = np.random.default_rng(0)
  fake, real = rng.uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  cells = lambda x: x.reshape(2, 2, 8, 2, 8, 3).mean((2, 4))
  want = 10.0 * np.abs(cells(fake) - cells(real)).mean()
  np.testing.assert_allclose(float(losses.colour_loss(jnp.asarray(fake), jnp.asarray(real), 10.0, 8)), want, rtol=1e-5)
  g_fake, g_real = jax.grad(lambda f, r: losses.colour_loss(f, r, 10.0, 8), argnums=(0, 1))(fake, real)
  assert np.asarray(g_fake).any() and not np.asarray(g_real).any()
  # texture inside a cell costs nothing: only the cell's mean colour counts
  shuffled = fake.reshape(2, 2, 8, 2, 8, 3)[:, :, ::-1, :, ::-1].reshape(fake.shape)
  assert float(losses.colour_loss(jnp.asarray(shuffled), jnp.asarray(fake), 1.0, 8)) < 1e-6


def test_segnet_features_are_the_segmenters_encoder_on_generator_range_images():
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
  variables = SegNet().init(jax.random.PRNGKey(0), (x + 1) / 2)
  feats = SegNet(features=True).apply(variables, x)  # the same parameters, no new ones
  assert [f.shape for f in feats] == [(2, 8, 8, 32), (2, 4, 4, 48), (2, 2, 2, 64)]
  _, inter = SegNet().apply(variables, (x + 1) / 2, capture_intermediates=True)
  inter = inter["intermediates"]
  for f, name in zip(feats, ("enc1b_gn", "enc2b_gn", "fuse_gn")):
    np.testing.assert_allclose(np.asarray(f), np.asarray(jax.nn.relu(inter[name]["__call__"][0])), atol=1e-6)


def test_perceptual_net_from_config():
  c = spade_config.preset("demo")
  net, weights = perceptual_net(c)  # the demo's own
  assert isinstance(net, SegNet) and net.features and weights == (1.0, 1.0, 1.0)
  c.loss.perceptual_net = "vgg19"
  net, weights = perceptual_net(c)
  assert isinstance(net, VGG19) and weights == losses.VGG_WEIGHTS
  c.loss.lambda_vgg = 0.0
  assert perceptual_net(c) == (None, ())  # lambda_vgg 0: no perceptual loss at all
  c.loss.perceptual_net = "vgg16"
  c.loss.kld_free_nats = -1.0
  with pytest.raises(UserError, match=r"loss.perceptual_net='vgg16' \(expected one of vgg19, demo_segmenter\)"
                                      r".*loss.kld_free_nats=-1.0 \(expected a number >= 0\)"):
    spade_config.validate(c)


def test_demo_segmenter_perceptual_params_train_once_and_fit_the_step(tmp_path):
  from spade_jax.data import demo
  from spade_jax.training import loop
  c = spade_config.preset("demo")
  c.data.root, c.data.crop_size, c.data.load_size = str(tmp_path / "demo"), 16, 16
  c.loss.lambda_vgg, c.loss.perceptual_net, c.eval.demo_segmenter_steps = 10.0, "demo_segmenter", 2
  demo.generate(c.data.root, 8, 2, size=16)
  params = loop._load_vgg(c)
  assert list((tmp_path / "demo" / "segmenter").glob("*.msgpack"))  # cached beside the data, like the evaluation's
  feats = perceptual_net(c)[0].apply({"params": params}, jnp.zeros((2, 16, 16, 3)))
  assert [f.shape[1] for f in feats] == [8, 4, 2]
  c.data.dataset, c.data.label_nc = "cityscapes", 35
  with pytest.raises(UserError, match="perceptual_net=demo_segmenter trains on the demo's data only"):
    loop._load_vgg(c)


def test_free_nats_fall_to_the_official_kl_over_the_decay():
  at = lambda step: float(losses.free_nats_at(jnp.asarray(step), 6.0, (240, 400)))
  assert [at(s) for s in (0, 240, 320, 400, 480)] == [6.0, 6.0, 3.0, 0.0, 0.0]
  assert losses.free_nats_at(jnp.asarray(5), 6.0) == 6.0 and losses.free_nats_at(jnp.asarray(5), 0.0, (1, 2)) == 0.0
  rng = np.random.default_rng(1)
  mu, logvar = rng.normal(0, 0.1, (2, 2, 8)).astype(np.float32)  # both images under 6 nats
  traced = jax.jit(lambda step: losses.kld(mu, logvar, 0.05, losses.free_nats_at(step, 6.0, (240, 400))))
  assert float(traced(100)) == 0.0  # free
  np.testing.assert_allclose(float(traced(400)), float(losses.kld(mu, logvar, 0.05)), rtol=1e-6)  # official


def test_the_demo_recipes_step_traces_with_every_option(tmp_path):
  """The demo's own options together in one train step (its runs are measured in the README, not here): traced,
  not compiled, on a tiny config; the metrics name every loss."""
  from spade_jax import parallel
  from spade_jax.training.state import create_train_state
  c = spade_config.preset("demo")
  c.data.root, c.data.crop_size, c.data.load_size = str(tmp_path), 32, 32
  c.model.ngf = c.model.ndf = 4
  c.model.n_layers_D = 2
  c.train.ema_decay, c.train.ema_start = 0.99, 2
  c.loss.update(lambda_vgg=10.0, perceptual_net="demo_segmenter", perceptual_start=3, kld_free_nats_decay=(2, 4),
                lambda_kld_aggregate=1.0, kld_aggregate_start=3)
  spade_config.validate(c)
  mesh = parallel.make_mesh(1)
  _, setup = create_train_state(c, mesh, fresh=False)
  s = c.data.crop_size
  batch = {"image": jax.ShapeDtypeStruct((8, s, s, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((8, s, s), jnp.int32), "instance": jax.ShapeDtypeStruct((8, s, s), jnp.int32)}
  if c.data.no_instance:
    batch.pop("instance")
  seg = jax.eval_shape(lambda: SegNet().init(jax.random.key(0), jnp.zeros((1, s, s, 3)))["params"])
  with jax.set_mesh(mesh):
    _, metrics = jax.eval_shape(setup.step, setup.abstract, batch, seg, jax.random.key(1))
  assert {"G_KLD", "G_KLD_aggregate", "G_GAN", "G_GAN_Feat", "G_VGG", "G_colour", "D_Fake", "D_real"} <= set(metrics)


def test_z_dim_sets_the_style_codes_width_in_encoder_generator_and_sampling():
  """model.z_dim (official --z_dim, which the official encoder ignores: 256) is the width of fc_mu / fc_var, of
  G's fc input and of the codes the evaluation and synthesis draw; shapes only (abstract init)."""
  from spade_jax.models import factory
  from tests.training.tiny import tiny_config
  c = tiny_config(use_vae=True)
  c.model.z_dim = 8
  spade_config.validate(c)
  s = c.data.crop_size
  E, G = factory.build_encoder(c), factory.build_generator(c)
  e_vars = jax.eval_shape(lambda: E.init(jax.random.key(0), jnp.zeros((2, s, s, 3))))
  mu, logvar = jax.eval_shape(lambda v: E.apply(v, jnp.zeros((2, s, s, 3))), e_vars)
  assert mu.shape == logvar.shape == (2, 8) and G.z_dim == 8
  sem = jnp.zeros((2, s, s, c.data.label_nc + 2))
  g_vars = jax.eval_shape(lambda: G.init({"params": jax.random.key(0)}, sem, jnp.zeros((2, 8))))
  assert g_vars["params"]["fc"]["kernel"].shape[0] == 8
  c.model.z_dim = 0
  with pytest.raises(UserError, match="model.z_dim=0"):
    spade_config.validate(c)
