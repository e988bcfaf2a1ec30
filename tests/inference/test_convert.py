"""Official checkpoints in: torch reference networks with the official keys -> python -m spade_jax.convert ->
Orbax -> spade_jax.load, equal to torch in eval mode (max abs <= 1e-4), in both spectral-norm formats; and clear
errors for wrong, mismatched or truncated files."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spade_jax import convert
from spade_jax.checkpoints import read_config_dir, restore_subtrees
from spade_jax.inference import load
from spade_jax.models import build_discriminator
from spade_jax.testing.parity import nchw, nhwc
from spade_jax.weights.official import ConversionError
from tests.inference import util

TOL = 1e-4

# Pairwise cover of {normal, more, most} x {VAE, no VAE} x {syncbatch, instance}; each case also exercises one way of
# giving the options the weights cannot: flags, label_nc inferred for `custom`, opt.txt, the mode inferred from the
# VAE fc, `most` inferred from up_4.
# (mode, crop, aspect, use_vae, norm, label_nc, dontcare, edges, how)
CASES = [
    ("normal", 64, 1.0, False, "syncbatch", 5, True, True, "flags"),
    ("normal", 64, 1.0, True, "instance", 6, False, False, "infer_label_nc"),
    ("more", 64, 0.5, False, "instance", 5, False, True, "opt"),
    ("more", 64, 1.0, True, "syncbatch", 4, True, False, "infer_mode"),
    ("most", 128, 0.5, False, "instance", 3, True, False, "flags"),
    ("most", 128, 1.0, True, "syncbatch", 4, False, True, "flags"),
]


def _cli_args(case, tmp_path):
  mode, crop, aspect, use_vae, norm, label_nc, dontcare, edges, how = case
  if how == "opt":
    opt = tmp_path / "opt.txt"
    opt.write_text(util.OPT_TXT.format(aspect=aspect, crop=crop, dontcare=dontcare, dataset="custom",
                                       label_nc=label_nc, ngf=4, no_instance=not edges, norm=norm, mode=mode,
                                       use_vae=use_vae))
    return [f"--opt={opt}"]
  args = ["--preset=custom", f"--crop_size={crop}", f"--aspect_ratio={aspect}",
          f"--contain_dontcare_label={dontcare}", f"--no_instance={not edges}"]
  if how != "infer_label_nc":
    args.append(f"--label_nc={label_nc}")
  if how == "flags" and mode != "most":
    args.append(f"--num_upsampling_layers={mode}")
  return args


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'vae' if c[3] else 'novae'}-{c[4]}-{c[8]}")
def test_generator_parity_through_checkpoint(case, tmp_path):
  mode, crop, aspect, use_vae, norm, label_nc, dontcare, edges, how = case
  nc = label_nc + int(dontcare)
  s = nc + int(edges)
  t = util.torch_generator(s, 4, mode, crop, aspect, use_vae, norm, seed=len(how) + crop)
  files = [f"--generator={util.save(t, tmp_path / 'latest_net_G.pth')}"]
  if use_vae:
    e = util.torch_encoder(4)
    files.append(f"--encoder={util.save(e, tmp_path / 'latest_net_E.pth')}")
  result = convert.main(files + _cli_args(case, tmp_path) + [f"--out={tmp_path / 'run'}"])
  cfg = read_config_dir(tmp_path / "run" / "checkpoints", 0)
  assert (cfg["model"]["num_upsampling_layers"], cfg["model"]["use_vae"], cfg["model"]["param_free_norm"],
          cfg["model"]["ngf"], cfg["data"]["label_nc"], cfg["data"]["contain_dontcare_label"],
          cfg["data"]["no_instance"], cfg["data"]["crop_size"], cfg["data"]["aspect_ratio"]) == (
              mode, use_vae, norm, 4, label_nc, dontcare, not edges, crop, aspect)
  assert result.info["parameters"]["G"] == sum(p.numel() for p in t.parameters())

  model = load(tmp_path / "run")
  h, w = model.image_size
  rng = np.random.default_rng(0)
  label, inst = util.blocky(rng, 2, h, w, nc), util.blocky(rng, 2, h, w, 4, 8)
  z = rng.normal(size=(2, 256)).astype(np.float32) if use_vae else None
  ours = model.synthesize(label, inst if edges else None, z=z, return_float=True)
  theirs = util.torch_images(t, util.semantics_np(label, inst, nc, edges), z)
  assert ours.shape == theirs.shape == (2, h, w, 3)
  err = np.abs(ours - theirs).max()
  assert err <= TOL, f"generator {case}: max abs diff {err:.3g}"

  if use_vae:  # the encoder, through the same checkpoint: style image -> mu, logvar
    style = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    mu, logvar = model.encode_style(list(style), 2)
    t_mu, t_logvar = util.torch_forward(e, style.astype(np.float32) / 255 * 2 - 1)
    assert max(np.abs(mu - t_mu.numpy()).max(), np.abs(logvar - t_logvar.numpy()).max()) <= TOL


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_discriminator_parity_through_checkpoint(norm, tmp_path):
  """norm_D 'spectralinstance' or 'spectral' (convs with bias, no norm): the converter reads which from the
  weights."""
  s = 7
  t = util.torch_generator(s, 4, "normal", 32, steps=1)
  d = util.torch_discriminator(s + 3, ndf=8, norm=norm)
  convert.main([f"--generator={util.save(t, tmp_path / 'G.pth')}",
                f"--discriminator={util.save(d, tmp_path / 'D.pth')}",
                "--preset=custom", "--crop_size=32", "--out", str(tmp_path / "run")])
  trees = restore_subtrees(tmp_path / "run" / "checkpoints", ("g", "d"), 0)
  assert sorted(trees) == ["d", "g"]
  import ml_collections
  config = ml_collections.ConfigDict(read_config_dir(tmp_path / "run" / "checkpoints"))
  assert config.model.discriminator_norm == norm
  x = np.random.default_rng(1).normal(size=(2, 64, 64, s + 3)).astype(np.float32)
  ours = jax.jit(build_discriminator(config).apply)(trees["d"], x)
  with torch.no_grad():
    theirs = d(nchw(x))
  for i, (a, b) in enumerate(zip(ours, theirs)):
    for j, (fa, fb) in enumerate(zip(a, b)):
      err = np.abs(np.asarray(fa) - nhwc(fb)).max()
      assert err <= TOL, f"D scale {i} feature {j}: {err:.3g}"


def test_old_spectral_norm_format(tmp_path):
  """Stored normalised `weight` + weight_orig + weight_u, no weight_v (torch 0.4). torch's load hook rebuilds v by a
  pseudo-inverse; we pick v = sigma W^T u / |W^T u|^2. Eval outputs agree with torch loading the same file."""
  s = 6
  t = util.torch_generator(s, 4, "normal", 32, use_vae=True, seed=5)
  e = util.torch_encoder(4, seed=5)
  d = util.torch_discriminator(s + 3, ndf=8, seed=5)
  old = {n: util.old_format(m.state_dict()) for n, m in (("G", t), ("E", e), ("D", d))}
  assert not any(k.endswith("weight_v") for k in old["G"]) and "head_0.conv_0.weight" in old["G"]
  paths = {n: util.save(sd, tmp_path / f"old_{n}.pth") for n, sd in old.items()}
  convert.main([f"--generator={paths['G']}", f"--encoder={paths['E']}", f"--discriminator={paths['D']}",
                "--preset=custom", "--crop_size=32", f"--out={tmp_path / 'run'}"])
  # torch loading the old file (its hook solves for v)
  t2 = util.torch_generator(s, 4, "normal", 32, use_vae=True, seed=99, steps=0)
  t2.load_state_dict(torch.load(paths["G"]))
  e2 = util.torch_encoder(4, seed=99, steps=0)
  e2.load_state_dict(torch.load(paths["E"]))
  d2 = util.torch_discriminator(s + 3, ndf=8, seed=99, steps=0)
  d2.load_state_dict(torch.load(paths["D"]))
  model = load(tmp_path / "run")
  rng = np.random.default_rng(2)
  label = util.blocky(rng, 2, 32, 32, s)
  z = rng.normal(size=(2, 256)).astype(np.float32)
  ours = model.synthesize(label, z=z, return_float=True)
  sem = util.semantics_np(label, None, s, False)
  for ref_model in (t2, t):  # torch on the old file, and the original model
    err = np.abs(ours - util.torch_images(ref_model.eval(), sem, z)).max()
    assert err <= TOL, err
  style = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  mu, _ = model.encode_style(style[0])
  assert np.abs(mu - util.torch_forward(e2, style.astype(np.float32) / 255 * 2 - 1)[0].numpy()).max() <= TOL
  import ml_collections
  config = ml_collections.ConfigDict(read_config_dir(tmp_path / "run" / "checkpoints"))
  x = rng.normal(size=(1, 64, 64, s + 3)).astype(np.float32)
  d_vars = restore_subtrees(tmp_path / "run" / "checkpoints", ("d",))["d"]
  ours_d = jax.jit(build_discriminator(config).apply)(d_vars, x)
  with torch.no_grad():
    theirs_d = d2(nchw(x))
  assert np.abs(np.asarray(ours_d[1][-1]) - nhwc(theirs_d[1][-1])).max() <= TOL


# ---------------------------------------------------------------------------------------------------------------
# Wrong files, wrong options
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
  """A small COCO-layout generator (182 classes + don't-care + edges = 184 channels) and a matching D."""
  d = tmp_path_factory.mktemp("coco_like")
  g = util.torch_generator(184, 4, "normal", 64, steps=1)
  return {"G": util.save(g, d / "G.pth"), "D": util.save(util.torch_discriminator(187, ndf=4), d / "D.pth"),
          "sd": {k: v.numpy() for k, v in g.state_dict().items()}, "dir": d}


def _convert(**kw):
  kw.setdefault("preset", "coco_stuff")
  kw.setdefault("flags", {"data.crop_size": 64})
  return convert.convert(**kw)


def test_wrong_network(coco_like):
  with pytest.raises(ConversionError, match=r"given as the generator, but it is a discriminator"):
    _convert(generator=coco_like["D"])
  with pytest.raises(ConversionError, match=r"given as the discriminator, but it is a generator"):
    _convert(generator=coco_like["G"], discriminator=coco_like["G"])


def test_wrong_preset_names_both_channel_counts(coco_like):
  with pytest.raises(ConversionError) as e:
    _convert(generator=coco_like["G"], preset="ade20k")
  msg = str(e.value)
  assert "semantic_nc=184" in msg and "= 151" in msg and "label_nc 150 (preset ade20k)" in msg
  assert "coco_stuff preset" in msg


def test_missing_preset_suggests_one(coco_like):
  with pytest.raises(ConversionError, match=r"--preset.*matches the coco_stuff preset"):
    convert.convert(coco_like["G"])


def test_truncated_dict_lists_missing_keys_and_shapes(coco_like, tmp_path):
  sd = dict(coco_like["sd"])
  del sd["up_1.conv_1.weight_orig"], sd["up_3.norm_s.mlp_gamma.bias"]
  sd["extra.weight"] = np.zeros((3, 3), np.float32)
  sd["up_0.conv_1.bias"] = np.zeros(7, np.float32)
  with pytest.raises(ConversionError) as e:
    _convert(generator=util.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "bad.pth"))
  msg = str(e.value)
  assert "missing keys (2)" in msg and "up_1.conv_1.weight_orig [16, 16, 3, 3]" in msg
  assert "up_3.norm_s.mlp_gamma.bias [8]" in msg
  assert "unexpected keys (1)" in msg and "extra.weight [3, 3]" in msg
  assert "up_0.conv_1.bias: file [7], model [32]" in msg


def test_mismatched_discriminator_and_explicit_options(coco_like, tmp_path):
  d_other = util.save(util.torch_discriminator(7 + 3, ndf=4), tmp_path / "D_other.pth")
  with pytest.raises(ConversionError, match=r"discriminator takes 10 input channels.*184 \+ 3"):
    _convert(generator=coco_like["G"], discriminator=d_other)
  with pytest.raises(ConversionError, match=r"no up_4 blocks.*flag says 'most'"):
    _convert(generator=coco_like["G"], flags={"data.crop_size": 64, "model.num_upsampling_layers": "most"})
  with pytest.raises(ConversionError, match=r"ngf=4, but flag says 64"):
    _convert(generator=coco_like["G"], flags={"data.crop_size": 64, "model.ngf": 64})


def test_truncated_file_and_existing_output(coco_like, tmp_path):
  raw = coco_like["G"].read_bytes()
  (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match="cut.pth"):
    _convert(generator=tmp_path / "cut.pth")
  _convert(generator=coco_like["G"], out=tmp_path / "run")
  with pytest.raises(ConversionError, match="--overwrite"):
    _convert(generator=coco_like["G"], out=tmp_path / "run")
  _convert(generator=coco_like["G"], out=tmp_path / "run", overwrite=True)
  info = json.loads((tmp_path / "run" / "conversion.json").read_text())
  assert info["semantic_nc"] == 184 and info["sources"]["data.crop_size"] == "flag"


def test_checkpoint_layout_matches_training(coco_like, tmp_path):
  """state = {'step': 0, 'g', 'd'} with init's collections and shapes; config = a full config dict."""
  import ml_collections

  from spade_jax.models import build_generator
  from spade_jax.weights.official import check_variables
  r = _convert(generator=coco_like["G"], discriminator=coco_like["D"], out=tmp_path / "run")
  assert sorted(r.state) == ["d", "g", "step"] and int(r.state["step"]) == 0
  cfg = read_config_dir(tmp_path / "run" / "checkpoints", 0)
  assert set(cfg) >= {"data", "model", "loss", "optim", "train", "seed"}
  config = ml_collections.ConfigDict(cfg)
  g = build_generator(config)
  abstract = jax.eval_shape(lambda: g.init(jax.random.key(0), np.zeros((1, 64, 64, 184), np.float32)))
  trees = restore_subtrees(tmp_path / "run" / "checkpoints", ("g", "d", "opt_g"))
  assert sorted(trees) == ["d", "g"]
  check_variables(trees["g"], abstract, "restored G")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(trees))


def test_opt_txt_parsing(tmp_path):
  p = tmp_path / "opt.txt"
  p.write_text(util.OPT_TXT.format(aspect=2.0, crop=512, dontcare=False, dataset="cityscapes", label_nc=35, ngf=64,
                                   no_instance=False, norm="syncbatch", mode="more", use_vae=False))
  opt = convert.read_opt_txt(p)
  assert opt["aspect_ratio"] == 2.0 and opt["crop_size"] == 512 and opt["dataset_mode"] == "cityscapes"
  assert opt["contain_dontcare_label"] is False and opt["norm_G"] == "spectralspadesyncbatch3x3"
  over = convert.opt_to_overrides(opt)
  assert over["data.preprocess"] == "fixed" and over["model.param_free_norm"] == "syncbatch"
  assert over["model.spade_kernel"] == 3 and over["model.spectral_G"] is True


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_encoder_norm_from_the_weights(norm, tmp_path):
  """norm_E 'spectralinstance' (convs without bias) or 'spectral' (bias, no norm): the converter reads which from the
  weights, and the converted encoder gives torch's mu and logvar."""
  t = util.torch_generator(6, 4, "normal", 32, use_vae=True, seed=3)
  e = util.torch_encoder(4, seed=4, norm=norm)
  convert.main([f"--generator={util.save(t, tmp_path / 'G.pth')}", f"--encoder={util.save(e, tmp_path / 'E.pth')}",
                "--preset=custom", "--crop_size=32", f"--out={tmp_path / 'run'}"])
  assert read_config_dir(tmp_path / "run" / "checkpoints", 0)["model"]["encoder_norm"] == norm
  x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  mu, logvar = load(tmp_path / "run").encode_style(list(x), 2)
  with torch.no_grad():
    tmu, tlogvar = e(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
  np.testing.assert_allclose(mu, tmu.numpy(), atol=1e-4)
  np.testing.assert_allclose(logvar, tlogvar.numpy(), atol=1e-4)
