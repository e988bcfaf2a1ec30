"""One whole training iteration equals the official trainer's, step for step, in PyTorch on the same weights.

The torch side is the official iteration written out on the reference modules
(spade_jax/testing/torch_reference.py): G step
(E encodes, G synthesises, D on [fake; real] in one call, hinge + feature matching + VGG + KLD, backward, update
G and E), then D step (E and G again in train mode without gradients, D on [fake; real] detached, hinge, backward,
update D). Both sides use SGD so that the parameter change *is* the gradient (one Adam step from a fresh state is
about lr * sign(g), which would hide a wrong gradient); losses, every updated parameter, spectral-norm vector and
batch-norm statistic are compared.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from spade_jax.testing import torch_reference as ref
from spade_jax.testing.parity import nchw, state_dict_np, variables_from
from spade_jax.training.step import StepSpec, g_trainable, train_step
from spade_jax.weights.vgg19 import vgg19_params
from tests.training.tiny import random_batch, tiny_config

LR = 0.5


def _close(ours, theirs, what, rel=2e-5, floor=1e-12):
  """Max |diff| relative to max |torch| of the leaf (or `floor`, for leaves whose true value is ~0)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = max(np.abs(theirs).max(), floor)
  err = np.abs(ours - theirs).max() / scale
  assert err <= rel, f"{what}: max |diff| {err:.2e} of max |torch| {scale:.2e}"
  return err


def test_one_iteration_equals_the_official_trainer():
  """In float64, so that the comparison sees the arithmetic and not rounding: float32 differences are amplified by
  batch norms over few values (as in tests/models/test_parity.py); the float32 step is compared with itself on
  other meshes and options in test_sharded_step.py and test_speed_options.py. Measured in float32: within 1e-3."""
  with jax.enable_x64(True):
    _iteration_parity(np.dtype("float64"), 1e-9)


def _iteration_parity(dtype, rel):
  config = tiny_config(use_vae=True, lambda_vgg=10.0, crop=32)
  config.model.n_layers_D = 4  # the official discriminator
  config.train.batch_size = 2
  spec = StepSpec.from_config(config)
  spec = dataclasses.replace(spec, nets=dataclasses.replace(spec.nets, dtype=jnp.dtype(dtype)))
  batch = random_batch(config, n=2, seed=7)
  batch["image"] = batch["image"].astype(dtype)
  sem = np.asarray(spec.nets.semantics({k: jnp.asarray(v) for k, v in batch.items()}))
  s = sem.shape[-1]

  torch.manual_seed(0)
  G = ref.xavier_init_(ref.SPADEGenerator(s, ngf=4, crop_size=32, use_vae=True))
  D = ref.xavier_init_(ref.MultiscaleDiscriminator(s + 3, ndf=4))
  E = ref.xavier_init_(ref.ConvEncoder(ngf=4, input_size=128))  # six layers, as ours at any size
  vgg = ref.VGG19Features().eval()
  for p in vgg.parameters():
    p.requires_grad_(False)
  for m in (G, D, E, vgg):
    m.to(getattr(torch, dtype.name))
  sem_t, real_t = nchw(sem), nchw(batch["image"])
  ref.train_steps_(G, sem_t, torch.randn(2, 256, dtype=sem_t.dtype))  # non-trivial u, v and running statistics
  ref.train_steps_(D, torch.cat([sem_t, real_t], 1))
  ref.train_steps_(E, real_t)

  g_vars = variables_from(G, "G", latent_hw=(G.sh, G.sw))
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=LR)
  state = {"step": jnp.zeros((), jnp.int32), "g": g_vars, "d": variables_from(D, "D"), "e": variables_from(E, "E")}
  state = jax.tree.map(jnp.asarray, state)
  state["opt_g"], state["opt_d"] = tx.init(g_trainable(state)), tx.init(state["d"]["params"])
  before = jax.tree.map(np.asarray, state)
  rng = jax.random.key(3)
  # the step's noise: eps of the G step and of the D step from fold_in(rng, step) split in two
  rng_g, rng_d = jax.random.split(jax.random.fold_in(rng, 0))
  eps_g, eps_d = (torch.from_numpy(np.asarray(jax.random.normal(r, (2, 256), jnp.float32)).astype(dtype))
                  for r in (rng_g, rng_d))
  new_state, metrics = jax.jit(lambda st, b: train_step(spec, tx, tx, st, b, vgg19_params(state_dict_np(vgg)), rng))(
      state, {k: jnp.asarray(v) for k, v in batch.items()})

  # ---- the official iteration in torch ----
  opt_g = torch.optim.SGD(list(G.parameters()) + list(E.parameters()), lr=LR)
  opt_d = torch.optim.SGD(D.parameters(), lr=LR)
  for m in (G, D, E):
    m.train()
  split = lambda pred: ([[f[:2] for f in sc] for sc in pred], [[f[2:] for f in sc] for sc in pred])
  mu, logvar = E(real_t)
  fake = G(sem_t, eps_g * torch.exp(0.5 * logvar) + mu)
  pf, pr = split(D(torch.cat([torch.cat([sem_t, fake], 1), torch.cat([sem_t, real_t], 1)], 0)))
  theirs = {"G_GAN": ref.hinge_g(pf), "G_GAN_Feat": ref.feature_matching(pf, pr, 10.0),
            "G_VGG": ref.vgg_loss(vgg, fake, real_t, lambda_vgg=10.0), "G_KLD": ref.kld(mu, logvar, 0.05)}
  opt_g.zero_grad()
  sum(theirs.values()).backward()
  opt_g.step()
  with torch.no_grad():
    mu, logvar = E(real_t)
    fake = G(sem_t, eps_d * torch.exp(0.5 * logvar) + mu)
  pf, pr = split(D(torch.cat([torch.cat([sem_t, fake], 1), torch.cat([sem_t, real_t], 1)], 0)))
  theirs.update(D_Fake=ref.hinge_d_fake(pf), D_real=ref.hinge_d_real(pr))
  opt_d.zero_grad()
  (theirs["D_Fake"] + theirs["D_real"]).backward()
  opt_d.step()

  for k, v in theirs.items():
    _close(metrics[k], v.item(), k, rel=rel)
  after = {"g": variables_from(G, "G", latent_hw=(G.sh, G.sw)), "d": variables_from(D, "D"),
           "e": variables_from(E, "E")}
  worst = 0.0
  for net in ("g", "d", "e"):
    # biases right before a batch norm get gradients of ~0 (rounding noise): their floor is the net's update scale
    floor = 1e-3 * max(np.abs(np.asarray(t) - np.asarray(o)).max() for t, o in zip(
        jax.tree.leaves(after[net]["params"]), jax.tree.leaves(before[net]["params"])))
    for col, tree in after[net].items():
      paths = jax.tree_util.tree_leaves_with_path(tree)
      ours = dict(jax.tree_util.tree_leaves_with_path(new_state[net][col]))
      old = dict(jax.tree_util.tree_leaves_with_path(before[net][col]))
      for path, theirs_leaf in paths:
        what = f"{net}/{col}/{jax.tree_util.keystr(path)}"
        if col == "params":  # the update is -LR * gradient: compare the updates
          worst = max(worst, _close(ours[path] - old[path], theirs_leaf - old[path], what, rel=rel, floor=floor))
        else:
          _close(ours[path], theirs_leaf, what, rel=rel)
  assert worst > 0  # the comparison saw real differences of updates, not all-zero trees
