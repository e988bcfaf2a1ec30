"""The SPADE train step: a G step, then a D step on the same batch, as the official trainer does.

G step: E (VAE only) encodes the real image to z; G synthesises; D sees fake and real in one call; G (+ E) is
updated with hinge + feature matching + VGG (+ KLD). D step: G (updated, still in train mode, as the official code)
synthesises again without gradients; D is updated with the hinge losses. SPADE batch statistics and spectral-norm
vectors update in every training-mode forward, so G's are updated twice per iteration and D's twice, as in torch.

The state is a plain dict pytree: {'step', 'g', 'd', ['e'], 'opt_g', 'opt_d', ['ema']}; 'g'/'d'/'e' hold variable
collections ('params', 'batch_stats', 'spectral'). The G optimiser covers {'g': G params[, 'e': E params]}; 'ema'
is an exponential moving average of those parameters (imaginaire's model averaging), used by eval and synthesis.

Gradient accumulation (`grad_accum` = k > 1): each half of the iteration runs over k micro-batches (rows i::k of the
batch) in a `lax.scan`, averages their gradients and applies one update. Every micro-batch starts from the same
variables, so the spectral-norm iteration (which depends on the weights only) is the same as without accumulation;
batch-norm statistics are per micro-batch (their running averages are averaged), so with 'syncbatch' or 'batch'
norms accumulation is close to, not equal to, the big-batch step; with 'instance' it is equal.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from spade_jax import losses, parallel, platforms
from spade_jax.errors import UserError
from spade_jax.models import VGG19, reparameterize
from spade_jax.models.layers import at_least_float32
from spade_jax.models.segnet import SegNet
from spade_jax.networks import Networks
from spade_jax.parallel import DATA


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static about the train step (hashable: closed over by jit): the networks, the loss weights (with
  the VGG network of the perceptual loss), gradient accumulation and the generator EMA."""
  nets: Networks
  vgg: nn.Module | None       # the perceptual loss's network (VGG19 or a demo SegNet); None: no perceptual loss
  vgg_weights: tuple          # the weight of each of its layers in the loss
  lambda_feat: float
  lambda_vgg: float
  lambda_kld: float
  lambda_colour: float        # 0: none (official); see config.loss.lambda_colour
  colour_cell: int
  kld_free_nats: float        # 0: official; see config.loss.kld_free_nats
  perceptual_start: int       # 0: from the first step (official); see config.loss.perceptual_start
  kld_free_nats_decay: tuple  # (): constant; (start, end): see config.loss.kld_free_nats_decay
  lambda_kld_aggregate: float  # 0: none (official); see config.loss.lambda_kld_aggregate
  kld_aggregate_start: int
  kld_aggregate_fit: str       # diagonal | full
  vae_warmup_steps: int       # 0: none (official); see config.loss.vae_warmup_steps
  grad_accum: int             # micro-batches per update
  ema_decay: float            # 0: no EMA of the generator
  ema_start: int              # steps before which the EMA just copies the weights

  @classmethod
  def from_config(cls, config, axis_name: str | None = None, platform: str | None = None) -> StepSpec:
    l, t = config.loss, config.train
    accum, decay = int(t.grad_accum), float(t.ema_decay)
    if accum < 1:
      raise UserError(f"config.train.grad_accum must be >= 1, got {accum}")
    if not 0.0 <= decay < 1.0:
      raise UserError(f"config.train.ema_decay must be in [0, 1) (0 disables the EMA), got {decay}")
    nets = Networks.from_config(config, axis_name, platform)
    vgg, vgg_weights = perceptual_net(config, nets.dtype)
    return cls(nets=nets, vgg=vgg, vgg_weights=vgg_weights,
               lambda_feat=l.lambda_feat, lambda_vgg=l.lambda_vgg, lambda_kld=l.lambda_kld,
               lambda_colour=float(l.lambda_colour), colour_cell=int(l.colour_cell),
               kld_free_nats=float(l.kld_free_nats), kld_free_nats_decay=tuple(int(v) for v in l.kld_free_nats_decay),
               lambda_kld_aggregate=float(l.lambda_kld_aggregate), kld_aggregate_start=int(l.kld_aggregate_start),
               kld_aggregate_fit=str(l.kld_aggregate_fit),
               perceptual_start=int(l.perceptual_start), vae_warmup_steps=int(l.vae_warmup_steps), grad_accum=accum,
               ema_decay=decay, ema_start=int(t.ema_start))


def perceptual_net(config, dtype=None) -> tuple[nn.Module | None, tuple[float, ...]]:
  """(network, layer weights) of the perceptual loss for config.loss ((None, ()) when lambda_vgg is 0): VGG19
  (official; relu1_1 .. relu5_1 weighted 1/32 .. 1) or a demo SegNet's encoder (1/2, 1/4, 1/8, weighted 1 each)."""
  l = config.loss
  if l.lambda_vgg <= 0:
    return None, ()
  if l.perceptual_net == "demo_segmenter":
    return SegNet(features=True), (1.0, 1.0, 1.0)
  return VGG19(l.vgg_input_norm, dtype=dtype), losses.VGG_WEIGHTS


def init_state(spec: StepSpec, tx_g, tx_d, rng) -> dict:
  """Fresh variables (official init) and optimiser states; jit this with out_shardings to build it on devices."""
  nets = spec.nets
  kg, kd, ke = jax.random.split(rng, 3)
  h, w = nets.image_size
  sem = jnp.zeros((1, h, w, nets.semantic_nc))
  z = jnp.zeros((1, nets.G.z_dim)) if nets.E is not None else None
  state = {"step": jnp.zeros((), jnp.int32),
           "g": nets.G.init(kg, sem, z),
           "d": nets.D.init(kd, jnp.zeros((1, h, w, nets.semantic_nc + 3)))}
  if nets.E is not None:
    state["e"] = nets.E.init(ke, jnp.zeros((1, h, w, 3)))
  state["opt_g"] = tx_g.init(g_trainable(state))
  state["opt_d"] = tx_d.init(state["d"]["params"])
  if spec.ema_decay > 0:
    state["ema"] = g_trainable(state)
  return state


def g_trainable(state) -> dict:
  params = {"g": state["g"]["params"]}
  if "e" in state:
    params["e"] = state["e"]["params"]
  return params


def ema_update(ema, params, step, decay: float, start: int):
  """ema <- decay * ema + (1 - decay) * params from step `start` on; before it the EMA follows the weights."""
  d = jnp.where(step < start, 0.0, decay)
  return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)


def _interleave(fake, real):
  """[f0, r0, f1, r1, ...]: D judges both in one call, and every row stays on the device that holds its sample
  (concatenating two batch-sharded arrays, [fake; real], makes XLA move half of each to other devices)."""
  return jnp.stack([fake, real], 1).reshape(2 * fake.shape[0], *fake.shape[1:])


def _deinterleave(outputs):
  """D's outputs on `_interleave`d rows -> (fake outputs, real outputs), each a list (per scale) of feature lists."""
  pairs = [[f.reshape(f.shape[0] // 2, 2, *f.shape[1:]) for f in scale] for scale in outputs]
  return [[f[:, 0] for f in scale] for scale in pairs], [[f[:, 1] for f in scale] for scale in pairs]


def _noise(nets: Networks, rng, n, axis_name, scale=None):
  """The VAE's eps for this (device's part of the) batch, drawn for the whole global batch so that a per-device or
  micro-batched step sees the same noise as the one-device step; times `scale` (the VAE warm-up) when given."""
  if nets.E is None:
    return None
  shape = (n,) + (nets.G.z_dim,)
  if axis_name is None:
    eps = jax.random.normal(rng, shape, jnp.float32)
  else:
    i = jax.lax.axis_index(axis_name)
    eps = jax.random.normal(rng, (n * jax.lax.axis_size(axis_name),) + shape[1:], jnp.float32)
    eps = jax.lax.dynamic_slice_in_dim(eps, i * n, n)
  return eps if scale is None else eps * scale


def _micro(tree, k):
  """(B, ...) leaves -> (k, B / k, ...): micro-batch i holds rows i, i + k, ... (so that each micro-batch of a
  batch sharded over devices is itself spread evenly over them)."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), tree)


def _value_and_grad(loss_fn, params, inputs, k):
  """value_and_grad of `loss_fn(params, inputs) -> (total, (metrics, updates))`, averaged over k micro-batches.

  Of the variable updates, batch statistics are averaged; the rest (spectral-norm vectors) are the same for every
  micro-batch and are taken from the last.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    (total, (metrics, updates)), grads = grad_fn(params, inputs)
    return total, metrics, updates, grads

  def split(out):
    (total, (metrics, updates)), grads = out
    mean_part = {"total": total, "metrics": metrics, "grads": grads,
                 "stats": {net: {c: v for c, v in u.items() if c == "batch_stats"} for net, u in updates.items()}}
    last_part = {net: {c: v for c, v in u.items() if c != "batch_stats"} for net, u in updates.items()}
    return mean_part, last_part

  micro = _micro(inputs, k)
  shapes = jax.eval_shape(lambda p, x: split(grad_fn(p, x)), params, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(carry, x):
    acc, _ = carry
    mean_part, last_part = split(grad_fn(params, x))
    return (jax.tree.map(jnp.add, acc, mean_part), last_part), None

  (summed, last), _ = jax.lax.scan(body, zeros, micro)
  mean = jax.tree.map(lambda x: x / k, summed)
  updates = {net: {**last[net], **mean["stats"].get(net, {})} for net in last}
  return mean["total"], mean["metrics"], updates, mean["grads"]


def _forward(nets: Networks, variables, inputs, half: str):
  """The chain both halves of the iteration run: E (VAE only) encodes the real image to z, G synthesises, D judges.

  `variables`: {'g', 'd'[, 'e']} collections, the half's trainable parameters in place. Half 'g': D on the fake in
  train mode (one spectral-norm power iteration, as the official D([fake; real]) call), then on the real with the
  iterated vectors, in eval mode and as a constant: the same outputs without back-propagating through the real half
  (D's instance norms are per sample). Half 'd': D on fake and real rows interleaved, both constants (the fake
  detached), in one train-mode call. D takes (semantics, image) apart so that its backward pass skips the label
  map's channels, and in half 'd' one label map stands for both rows of each fake / real pair (convolved once, see
  `Conv2d`).
  Returns (fake, (mu, logvar) or None, D's outputs on the fake, on the real, the variable updates of 'e' / 'g' / 'd').
  """
  sem, real = inputs["sem"], inputs["real"]
  updates, z, posterior = {}, None, None
  if nets.E is not None:
    posterior, updates["e"] = nets.E.apply(variables["e"], real, train=True, mutable=["spectral"])
    mu, logvar = posterior
    z = reparameterize(at_least_float32(mu), at_least_float32(logvar), inputs["eps"])
  fake, updates["g"] = nets.G.apply(variables["g"], sem, z, train=True, mutable=["batch_stats", "spectral"])
  if half == "g":
    pred_fake, updates["d"] = nets.D.apply(variables["d"], (sem, fake), train=True, mutable=["spectral"])
    pred_real = jax.lax.stop_gradient(nets.D.apply({**variables["d"], **updates["d"]}, (sem, real), train=False))
  elif half == "d":
    fake_and_real = jax.lax.stop_gradient((sem, _interleave(fake, real)))  # sem: shared by both rows
    d_out, updates["d"] = nets.D.apply(variables["d"], fake_and_real, train=True, mutable=["spectral"])
    pred_fake, pred_real = _deinterleave(d_out)
  else:
    raise ValueError(f"half must be 'g' or 'd', got {half!r}")
  return fake, posterior, pred_fake, pred_real, updates


def _networks_variables(state) -> dict:
  return {net: state[net] for net in ("g", "d", "e") if net in state}


def train_step(spec: StepSpec, tx_g, tx_d, state, batch, vgg_params, rng, axis_name: str | None = None):
  """One iteration. Under jit `batch` is the global batch. Under shard_map (`axis_name` bound) it is this device's
  slice: gradients and metrics are averaged over devices. The KLD, a sum over the batch, is scaled by the number of
  devices x micro-batches so that the average of the parts equals the whole batch's sum."""
  nets = spec.nets
  sync = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)
  k = spec.grad_accum
  kld_scale = (jax.lax.axis_size(axis_name) if axis_name else 1) * k
  rng = jax.random.fold_in(rng, state["step"])
  # VAE warm-up (0 -> 1): the KLD weight and the posterior noise rise together; None without one (official)
  warm = jnp.minimum(1.0, state["step"] / spec.vae_warmup_steps) if spec.vae_warmup_steps > 0 else None
  free_nats = losses.free_nats_at(state["step"], spec.kld_free_nats, spec.kld_free_nats_decay)
  rng_g, rng_d = jax.random.split(rng)
  sem, real = nets.semantics(batch), batch["image"].astype(nets.dtype or jnp.float32)
  n_local = real.shape[0]

  # ---- G step ----
  def g_loss(trainable, inputs):
    variables = _networks_variables(state)
    variables["g"] = {**state["g"], "params": trainable["g"]}
    if "e" in trainable:
      variables["e"] = {**state["e"], "params": trainable["e"]}
    fake, posterior, pred_fake, pred_real, updates = _forward(nets, variables, inputs, "g")
    metrics = {}
    if posterior is not None:
      metrics["G_KLD"] = losses.kld(*posterior, spec.lambda_kld, free_nats) * kld_scale
      if warm is not None:
        metrics["G_KLD"] = metrics["G_KLD"] * warm
      if spec.lambda_kld_aggregate > 0:  # moments of this device's (micro-)batch rows, on the whole batch's scale
        agg = losses.kld_aggregate(*posterior, spec.lambda_kld_aggregate, posterior[0].shape[0] * kld_scale,
                                   spec.kld_aggregate_fit)
        metrics["G_KLD_aggregate"] = jnp.where(state["step"] >= spec.kld_aggregate_start, agg, 0.0)
    metrics["G_GAN"] = losses.hinge_g(pred_fake)
    if spec.lambda_feat > 0:
      metrics["G_GAN_Feat"] = losses.feature_matching(pred_fake, pred_real, spec.lambda_feat)
    if spec.vgg is not None:  # the perceptual features of the real image are constants
      vgg = lambda x: spec.vgg.apply({"params": vgg_params}, x)
      metrics["G_VGG"] = losses.vgg_loss(vgg(fake), jax.lax.stop_gradient(vgg(inputs["real"])), spec.lambda_vgg,
                                         spec.vgg_weights)
      if spec.perceptual_start > 0:
        metrics["G_VGG"] = jnp.where(state["step"] >= spec.perceptual_start, metrics["G_VGG"], 0.0)
    if spec.lambda_colour > 0:
      metrics["G_colour"] = losses.colour_loss(fake, inputs["real"], spec.lambda_colour, spec.colour_cell)
    return sum(metrics.values()), (metrics, updates)

  g_step_inputs = {"sem": sem, "real": real, "eps": _noise(nets, rng_g, n_local, axis_name, warm)}
  g_total, g_metrics, g_updates, g_grads = _value_and_grad(g_loss, g_trainable(state), g_step_inputs, k)
  g_grads = sync(g_grads)
  g_param_updates, opt_g = tx_g.update(g_grads, state["opt_g"], g_trainable(state))
  new_g = optax.apply_updates(g_trainable(state), g_param_updates)
  state = {**state, "opt_g": opt_g,
           "g": {**state["g"], **g_updates["g"], "params": new_g["g"]},
           "d": {**state["d"], **g_updates["d"]}}
  if "e" in state:
    state["e"] = {**state["e"], **g_updates["e"], "params": new_g["e"]}
  if "ema" in state:
    state["ema"] = ema_update(state["ema"], new_g, state["step"], spec.ema_decay, spec.ema_start)

  # ---- D step (the updated G synthesises again, in train mode, without gradients) ----
  def d_loss(d_params, inputs):
    variables = _networks_variables(state)
    variables["d"] = {**state["d"], "params": d_params}
    _, _, pred_fake, pred_real, updates = _forward(nets, variables, inputs, "d")
    metrics = {"D_Fake": losses.hinge_d_fake(pred_fake), "D_real": losses.hinge_d_real(pred_real)}
    return sum(metrics.values()), (metrics, updates)

  d_step_inputs = {"sem": sem, "real": real, "eps": _noise(nets, rng_d, n_local, axis_name, warm)}
  d_total, d_metrics, d_updates, d_grads = _value_and_grad(d_loss, state["d"]["params"], d_step_inputs, k)
  d_grads = sync(d_grads)
  d_param_updates, opt_d = tx_d.update(d_grads, state["opt_d"], state["d"]["params"])
  for net in ("g", "e"):
    if net in d_updates:
      state[net] = {**state[net], **d_updates[net]}
  state["d"] = {**state["d"], **d_updates["d"], "params": optax.apply_updates(state["d"]["params"], d_param_updates)}
  state["opt_d"] = opt_d
  state["step"] = state["step"] + 1

  metrics = {**g_metrics, **d_metrics, "G_total": g_total, "D_total": d_total,
             "lr_G": opt_g.hyperparams["learning_rate"], "lr_D": opt_d.hyperparams["learning_rate"]}
  return state, sync(metrics)


def make_train_step(spec: StepSpec, tx_g, tx_d, mesh, state_sharding, *, use_shard_map: bool = False):
  """jit over the mesh with explicit shardings, the state donated, and the mesh platform's compiler options.

  Default: plain jit on global arrays; XLA partitions the batch and makes batch statistics global. With
  `use_shard_map` the body runs per device with explicit collectives (G built with axis_name=DATA so SPADE's
  sync batch norm pmeans its statistics; gradients and metrics are pmean'd).
  """
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  body = functools.partial(train_step, spec, tx_g, tx_d)
  if use_shard_map:
    if spec.nets.G.axis_name != DATA:
      raise ValueError("the shard_map step needs a generator built with axis_name='data'")
    body = jax.shard_map(functools.partial(train_step, spec, tx_g, tx_d, axis_name=DATA), mesh=mesh,
                         in_specs=(P(), P(DATA), P(), P()), out_specs=(P(), P()), check_vma=False)
  return jax.jit(body, in_shardings=(state_sharding, data, repl, repl), out_shardings=(state_sharding, repl),
                 donate_argnums=(0,),
                 compiler_options=platforms.compiler_options(platforms.platform_of(mesh)))
