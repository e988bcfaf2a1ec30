"""Why a demo run does or does not learn the three styles: the encoder's codes and the generator's use of them.

  .venv/bin/python scripts/demo_style_probe.py --checkpoint=runs/demo [--step=N] [--num_images=192]

For the training images (their recorded day / sunset / night styles): the mean code (the encoder's mu) of each
style, the distance between each pair of mean codes in units of the posterior std (the mean of exp(logvar / 2)
over images and dimensions; the noise the generator sees around a code), the mean KL per image, and how often an
image's own code is nearest to its style's mean. Then the generator: its output's mean absolute change (0..255)
between the mean codes of each pair of styles on the first 16 validation label maps. A pair closer than about two
posterior stds, or an output change far below the other pairs', is the pair the generator draws as one style.

Then where random codes fall: the style means in the plane they span (axis 1 from night's mean to day's, axis 2
towards sunset's), in units of the prior N(0, I) (what `z ~ N(0, I)` draws), the posterior std along each axis, and
the shares of the styles among 20,000 codes from the prior and among codes from the posterior (mu + std * noise,
what the generator is trained on) by the nearest style mean. A prior share far below the posterior share (1/3 each
when the data is balanced) means the data's codes spread wider than the prior: random codes fall between them.
"""
import argparse
import itertools
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def probe(checkpoint, step=None, num_images=192) -> dict:
  import jax.numpy as jnp

  import spade_jax
  from spade_jax.evaluation import demo_segmenter, style

  model = spade_jax.load(checkpoint, step)
  data = model.config.data
  images, _ = demo_segmenter.load_split(data, "train", num_images)
  names = np.asarray(style.STYLES)[style.read_styles(data, "train")[:len(images)]]
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1
  mus, logvars = [], []
  for i in range(0, len(x), 32):
    mu, logvar = model.nets.encode(model._e_vars, x[i:i + 32])
    mus.append(np.asarray(mu, np.float64))
    logvars.append(np.asarray(logvar, np.float64))
  mu, logvar = np.concatenate(mus), np.concatenate(logvars)
  std = float(np.exp(logvar / 2).mean())
  kl = float((-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar))).sum(1).mean())
  means = {s: mu[names == s].mean(0) for s in style.STYLES}
  nearest = np.array(style.STYLES)[np.argmin(
      [np.linalg.norm(mu - means[s], axis=1) for s in style.STYLES], axis=0)]
  val_labels = demo_segmenter.load_split(data, "val", 16)[1]
  out = {s: np.asarray(model.synthesize(list(val_labels), z=np.repeat(means[s][None], len(val_labels), 0)),
                       np.float64) for s in style.STYLES}
  pairs = {f"{a}-{b}": {"distance_in_std": float(np.linalg.norm(means[a] - means[b]) / std),
                        "output_change": float(np.abs(out[a] - out[b]).mean())}
           for a, b in itertools.combinations(style.STYLES, 2)}
  return {"step": model.step, "posterior_std": std, "kl_per_image": kl,
          "code_norm": float(np.linalg.norm(mu, axis=1).mean()),
          "nearest_mean_accuracy": float((nearest == names).mean()), "pairs": pairs,
          **code_geometry(mu, logvar, names, means)}


def code_geometry(mu, logvar, names, means, n_random=20000, seed=0) -> dict:
  """The style means in the plane they span, in prior units, and the nearest-mean shares of prior and posterior
  codes (module docstring)."""
  from spade_jax.evaluation import style

  m = np.stack([means[s] for s in style.STYLES])  # day, sunset, night
  a1 = (m[0] - m[2]) / np.linalg.norm(m[0] - m[2])
  a2 = (m[1] - m[2]) - ((m[1] - m[2]) @ a1) * a1
  a2 = a2 / np.linalg.norm(a2)
  std = np.exp(logvar / 2)
  rng = np.random.default_rng(seed)

  def shares(z):
    nearest = (z @ m.T - 0.5 * (m ** 2).sum(1)).argmax(1)  # argmin of |z - m_k|
    return {s: float(v) for s, v in zip(style.STYLES, np.bincount(nearest, minlength=3) / len(z))}

  return {"plane": {s: (float(means[s] @ a1), float(means[s] @ a2)) for s in style.STYLES},
          "posterior_std_on_axes": (float(np.sqrt((std ** 2 * a1 ** 2).sum(1)).mean()),
                                    float(np.sqrt((std ** 2 * a2 ** 2).sum(1)).mean())),
          "prior_shares": shares(rng.standard_normal((n_random, mu.shape[1]))),
          "posterior_shares": shares(mu + std * rng.standard_normal(mu.shape))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default="runs/demo")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--num_images", type=int, default=192)
  args = p.parse_args()
  r = probe(args.checkpoint, args.step, args.num_images)
  print(f"step {r['step']}: posterior std {r['posterior_std']:.3f}, KL {r['kl_per_image']:.2f} nats/image, code "
        f"norm {r['code_norm']:.2f}, nearest style mean {r['nearest_mean_accuracy']:.1%}")
  for pair, v in r["pairs"].items():
    print(f"  {pair:14s} mean codes {v['distance_in_std']:.2f} posterior stds apart, output change "
          f"{v['output_change']:.1f}")
  print("  style means in prior units (axis 1 night -> day, axis 2 towards sunset): " + ", ".join(
      f"{s} ({x:+.2f}, {y:+.2f})" for s, (x, y) in r["plane"].items())
      + "; posterior std on the axes {:.2f}, {:.2f}".format(*r["posterior_std_on_axes"]))
  for what in ("prior", "posterior"):
    print(f"  nearest style mean of {what} codes: " + ", ".join(
        f"{s} {v:.2f}" for s, v in r[f"{what}_shares"].items()))


if __name__ == "__main__":
  main()
