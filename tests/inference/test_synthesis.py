"""Images out: the notebook API (spade_jax.load(...).synthesize) and the synthesis command, end to end on the real
COCO-Stuff samples, with a small COCO-layout model converted from the torch reference (182 classes + don't-care +
edges = 184 channels, ngf 4, 64x64), a VAE model with style images, and a single-device load of a checkpoint
written on the 8-device mesh."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import spade_jax
from spade_jax import convert, synthesize
from spade_jax.data.transforms import image_to_array
from tests.inference import util

REPO = pathlib.Path(__file__).resolve().parents[2]
S = 184  # COCO-Stuff: 182 + don't-care + edges
SIZE = 64


def _convert(tmp, use_vae):
  g = util.torch_generator(S, 4, "normal", SIZE, use_vae=use_vae, seed=11, steps=1)
  args = [f"--generator={util.save(g, tmp / 'G.pth')}", "--preset=coco_stuff", f"--crop_size={SIZE}",
          f"--out={tmp / 'run'}"]
  e = None
  if use_vae:
    e = util.torch_encoder(4, seed=12, steps=1)
    args.append(f"--encoder={util.save(e, tmp / 'E.pth')}")
  convert.main(args)
  return {"dir": tmp / "run", "G": g, "E": e}


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
  return _convert(tmp_path_factory.mktemp("coco_run"), use_vae=False)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  return _convert(tmp_path_factory.mktemp("vae_run"), use_vae=True)


def _sample_files(root):
  labels = sorted((root / "val_label").glob("*.png"))
  insts = [root / "val_inst" / p.name for p in labels]
  assert labels and all(p.is_file() for p in insts)
  return labels, insts


def _reference_inputs(labels, insts):
  """The pipeline's test-time rules, written out independently: PIL NEAREST to 64x64, 255 -> 182."""
  lab = np.stack([np.asarray(Image.open(p).resize((SIZE, SIZE), Image.NEAREST)) for p in labels]).astype(np.int32)
  lab[lab == 255] = 182
  ins = np.stack([np.asarray(Image.open(p).resize((SIZE, SIZE), Image.NEAREST)) for p in insts]).astype(np.int32)
  return lab, ins


def _tensor2im(x):
  return np.clip((x + 1) / 2.0 * 255.0, 0, 255).astype(np.uint8)


def test_api_on_real_coco_samples(coco_run, coco_sample_dir):
  labels, insts = _sample_files(coco_sample_dir)
  model = spade_jax.load(coco_run["dir"])
  assert model.image_size == (SIZE, SIZE) and model.num_classes == 183 and not model.use_vae
  assert model.class_names[0] == "person" and model.class_names[182] == "unlabeled"
  assert model.palette.shape == (183, 3) and model.palette.dtype == np.uint8

  out = model.synthesize(labels, insts)  # paths
  assert out.shape == (len(labels), SIZE, SIZE, 3) and out.dtype == np.uint8
  pil = model.synthesize([Image.open(p) for p in labels], [Image.open(p) for p in insts])
  arrays = model.synthesize([np.asarray(Image.open(p)) for p in labels], [np.asarray(Image.open(p)) for p in insts])
  np.testing.assert_array_equal(out, pil)
  np.testing.assert_array_equal(out, arrays)

  lab, ins = _reference_inputs(labels, insts)
  theirs = _tensor2im(util.torch_images(coco_run["G"], util.semantics_np(lab, ins, 183, True)))
  diff = np.abs(out.astype(int) - theirs.astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())  # truncation may flip by one level

  # colour-coded labels (the model's palette) give the same images as the index maps
  colour = model.colorize(labels)
  np.testing.assert_array_equal(model.synthesize(list(colour), insts), out)


def test_label_validation_and_non_vae_rejects_style(coco_run):
  model = spade_jax.load(coco_run["dir"])
  for path in (coco_run["dir"] / "checkpoints", coco_run["dir"] / "checkpoints" / "0"):
    assert spade_jax.load(path).step == 0  # a workdir, its checkpoints folder, or one step's folder
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
    spade_jax.load(coco_run["dir"], step=7)
  bad = np.zeros((SIZE, SIZE), np.uint8)
  bad[3, 4] = 200
  with pytest.raises(ValueError, match=r"label id 200 .*outside \[0, 183\) for label_nc=182"):
    model.synthesize(bad, bad)
  with pytest.raises(ValueError, match="trained without the VAE encoder"):
    model.synthesize(np.zeros((SIZE, SIZE), np.uint8), style=np.zeros((SIZE, SIZE, 3), np.uint8))
  with pytest.raises(ValueError, match="match no class"):
    model.synthesize(np.full((8, 8, 3), 7, np.uint8))


def test_synthesis_command_on_real_coco_samples(coco_run, coco_sample_dir, tmp_path, capsys):
  labels, insts = _sample_files(coco_sample_dir)
  written = synthesize.main([f"--checkpoint={coco_run['dir']}", f"--labels={coco_sample_dir}/val_label/*.png",
                             f"--instances={coco_sample_dir / 'val_inst'}", f"--out={tmp_path / 'out'}",
                             "--batch_size=8", "--save_labels"])
  assert [p.name for p in written] == [p.name for p in labels]
  assert f"[{len(labels)}/{len(labels)}]" in capsys.readouterr().out
  api = spade_jax.load(coco_run["dir"]).synthesize(labels, insts)
  cli = np.stack([np.asarray(Image.open(p)) for p in written])
  np.testing.assert_array_equal(cli, api)
  assert (tmp_path / "out" / f"{labels[0].stem}_label.png").is_file()

  # colour-coded label PNGs + a palette file
  model = spade_jax.load(coco_run["dir"])
  cdir = tmp_path / "colour"
  cdir.mkdir()
  for p, c in zip(labels, model.colorize(labels)):
    Image.fromarray(c).save(cdir / p.name)
  (tmp_path / "colors.json").write_text(json.dumps(model.palette.tolist()))
  with pytest.raises(ValueError, match="--palette"):
    synthesize.main([f"--checkpoint={coco_run['dir']}", f"--labels={cdir}", f"--out={tmp_path / 'c0'}"])
  written = synthesize.main([f"--checkpoint={coco_run['dir']}", f"--labels={cdir}", f"--out={tmp_path / 'c1'}",
                             f"--palette={tmp_path / 'colors.json'}", f"--instances={coco_sample_dir / 'val_inst'}",
                             "--batch_size=8"])
  np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in written]), api)


def test_vae_style_and_multimodal(vae_run, coco_sample_dir, tmp_path):
  labels, insts = _sample_files(coco_sample_dir)
  labels, insts = labels[:2], insts[:2]
  model = spade_jax.load(vae_run["dir"])
  assert model.use_vae and model.has_encoder

  a, a_again, b = (model.synthesize(labels, insts, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(a.astype(int) - b).mean() > 1, "different seeds must give different images"
  multi = model.synthesize(labels, insts, seed=0, num_samples=3)
  assert multi.shape == (2, 3, SIZE, SIZE, 3)
  np.testing.assert_array_equal(multi[:, 0], a)  # sample k uses the noise of (seed, k)
  assert np.abs(multi[:, 1].astype(int) - multi[:, 2]).mean() > 1

  # a style image: z = the encoder's mu (deterministic, seed-free), equal to torch E -> G on the same inputs
  style = coco_sample_dir / "val_img" / f"{labels[0].stem}.jpg"
  s0 = model.synthesize(labels, insts, style=style, seed=0, return_float=True)
  s1 = model.synthesize(labels, insts, style=Image.open(style), seed=5, return_float=True)
  np.testing.assert_array_equal(s0, s1)
  x = image_to_array(Image.open(style).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC))[None]
  mu, _ = util.torch_forward(vae_run["E"], x)
  lab, ins = _reference_inputs(labels, insts)
  theirs = util.torch_images(vae_run["G"], util.semantics_np(lab, ins, 183, True), np.repeat(mu.numpy(), 2, 0))
  assert np.abs(s0 - theirs).max() <= 1e-4
  sampled = model.synthesize(labels, insts, style=style, sample_style=True, return_float=True)
  assert np.abs(sampled - s0).max() > 1e-3

  out = tmp_path / "vae"
  written = synthesize.main([f"--checkpoint={vae_run['dir']}", f"--labels={labels[1]}",
                             f"--instances={coco_sample_dir / 'val_inst'}", f"--style={coco_sample_dir / 'val_img'}",
                             "--samples=2", "--sample_style", f"--out={out}", "--batch_size=1"])
  assert [p.name for p in written] == [f"{labels[1].stem}_s0.png", f"{labels[1].stem}_s1.png"]


def test_single_device_load_of_a_mesh_checkpoint(coco_run, tmp_path):
  """A checkpoint written with arrays sharded over the 8-device mesh loads and synthesizes in a 1-device process."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from spade_jax.checkpoints import read_config_dir, restore_subtrees
  from spade_jax.training.checkpointer import Checkpointer
  ck = coco_run["dir"] / "checkpoints"
  state = restore_subtrees(ck, ("g",), 0)
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data") if x.ndim and x.shape[0] % 8 == 0 else P()))
  state = {"step": jax.numpy.zeros((), jax.numpy.int32), "g": jax.tree.map(put, state["g"])}
  assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(state["g"]))
  with Checkpointer(tmp_path / "mesh" / "checkpoints", async_save=False) as c:
    c.save(3, state, config=read_config_dir(ck, 0))
  rng = np.random.default_rng(0)
  label, inst = util.blocky(rng, 2, SIZE, SIZE, 183), util.blocky(rng, 2, SIZE, SIZE, 5, 8)
  np.save(tmp_path / "label.npy", label)
  np.save(tmp_path / "inst.npy", inst)
  code = (
      "import sys, jax, numpy as np, spade_jax\n"
      "assert jax.device_count() == 1, jax.devices()\n"
      f"m = spade_jax.load({str(tmp_path / 'mesh')!r})\n"
      "assert m.step == 3\n"
      f"np.save({str(tmp_path / 'out.npy')!r}, m.synthesize(np.load({str(tmp_path / 'label.npy')!r}), "
      f"np.load({str(tmp_path / 'inst.npy')!r})))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)
  here = spade_jax.load(coco_run["dir"]).synthesize(label, inst)
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), here)


def test_example_notebook_runs_as_written(tmp_path, monkeypatch):
  """examples/synthesize.ipynb is valid nbformat-4 JSON, and its code cells run unchanged from a repository root that
  has what `make demo` writes: data/demo (generated here, small) and runs/demo (here a VAE model of the demo's
  layout converted from the torch reference, instead of eight minutes of training)."""
  from spade_jax.data import demo

  nb = json.loads((REPO / "examples" / "synthesize.ipynb").read_text())
  assert nb["nbformat"] == 4 and all(c["cell_type"] in ("markdown", "code") for c in nb["cells"])
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  g = util.torch_generator(demo.NUM_CLASSES, 4, "normal", SIZE, use_vae=True, seed=13, steps=1)
  e = util.torch_encoder(4, seed=14, steps=1)
  convert.main([f"--generator={util.save(g, tmp_path / 'G.pth')}", f"--encoder={util.save(e, tmp_path / 'E.pth')}",
                "--preset=demo", f"--crop_size={SIZE}", f"--out={tmp_path / 'runs' / 'demo'}"])
  demo.generate(tmp_path / "data" / "demo", num_train=1, num_val=3, size=SIZE)
  (tmp_path / "examples").mkdir()
  monkeypatch.chdir(tmp_path / "examples")  # as Jupyter starts it: the notebook moves to the repository root
  shown = []
  ns = {"display": shown.append}
  for src in code:
    exec(compile(src, "<notebook>", "exec"), ns)
  assert ns["images"].shape == (2, SIZE, SIZE, 3) and ns["same"].shape == (1, SIZE, SIZE, 3)
  assert ns["styled"].shape == (3, SIZE, SIZE, 3) and ns["multi"].shape == (1, 4, SIZE, SIZE, 3)
  assert [im.size for im in shown] == [(3 * SIZE, 2 * SIZE), (4 * SIZE, SIZE)]
