"""The config schema (spade_jax.config): complete presets, the configs/ files built on them, upgrading old configs."""
import importlib
import pathlib

import ml_collections
import pytest

from spade_jax import config as spade_config
from spade_jax.errors import UserError
from tests.conftest import REPO


def _keys(c, prefix=""):
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _keys(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


@pytest.mark.parametrize("name", ["coco_stuff", "ade20k", "cityscapes", "custom", "demo", "default"])
def test_configs_files_return_the_library_presets(name):
  assert importlib.import_module(f"configs.{name}").get_config().to_dict() == spade_config.preset(name).to_dict()


@pytest.mark.parametrize("name", spade_config.PRESETS)
def test_presets_define_exactly_the_schema_keys(name):
  assert sorted(_keys(spade_config.preset(name))) == sorted(_keys(spade_config.defaults()))


@pytest.mark.parametrize("name, semantic_nc, hw", [("coco_stuff", 184, (256, 256)), ("ade20k", 151, (256, 256)),
                                                  ("cityscapes", 36, (256, 512)), ("demo", 7, (64, 64))])
def test_dataset_facts(name, semantic_nc, hw):
  from spade_jax.models import output_size
  from spade_jax.semantics import semantic_channels as snc
  c = spade_config.preset(name)
  assert snc(c.data) == semantic_nc
  assert output_size(c.data.crop_size, c.data.aspect_ratio, c.model.num_upsampling_layers) == hw
  if name in spade_config.DATASETS:
    assert c.data.dataset == name


def test_keys_read_by_code_have_schema_defaults():
  d = spade_config.defaults()
  assert (d.data.demo_generate, d.data.demo_num_train, d.data.demo_num_val) == (False, 512, 32)
  assert d.data.coco_no_portraits is False and d.data.prefetch == 4 and d.train.ema_start == 1000
  assert d.model.dtype == "float32" and d.model.spade_label_conv == "auto" and d.train.grad_accum == 1


def test_demo_preset_reads_its_data_folder_when_called(monkeypatch):
  monkeypatch.setenv("SPADE_DEMO_DATA", "/somewhere/demo")
  assert spade_config.preset("demo").data.root == "/somewhere/demo"


def test_from_dict_fills_what_an_older_config_lacks():
  old = spade_config.preset("cityscapes").to_dict()
  for section, key in (("model", "dtype"), ("model", "spade_label_conv"), ("data", "coco_no_portraits"),
                       ("train", "ema_start"), ("train", "grad_accum")):
    del old[section][key]
  del old["parallel"]
  c = spade_config.from_dict(old)
  assert c.to_dict() == spade_config.preset("cityscapes").to_dict()
  assert c.data.label_nc == 35 and c.model.dtype == "float32" and c.train.ema_start == 1000


def test_from_dict_round_trips_and_keeps_values():
  c = spade_config.preset("demo")
  c.train.ema_decay, c.data.root = 0.999, "/data/x"
  assert spade_config.from_dict(c.to_dict()).to_dict() == c.to_dict()
  assert spade_config.from_dict(c).to_dict() == c.to_dict()


def test_from_dict_names_unknown_keys():
  d = spade_config.defaults().to_dict()
  d["data"]["colour_jitter"] = True
  d["schedule"] = {"warmup": 5}
  with pytest.raises(ValueError, match=r"data\.colour_jitter, schedule"):
    spade_config.from_dict(d)
  with pytest.raises(ValueError, match=r"train\.batch_size"):
    spade_config.from_dict({"train": {"batch_size": "eight"}})


def test_unknown_preset_and_data_set():
  with pytest.raises(ValueError, match="unknown preset 'mnist'"):
    spade_config.preset("mnist")
  with pytest.raises(ValueError, match="unknown data set"):
    spade_config.for_dataset("demo")


def test_library_does_not_import_the_top_level_configs_or_edit_sys_path():
  for path in pathlib.Path(REPO / "spade_jax").rglob("*.py"):
    text = path.read_text()
    assert "sys.path" not in text, path
    assert "from configs" not in text and "import configs" not in text, path


def test_spade_label_conv_auto_resolves_per_platform_and_bad_values_are_named():
  from spade_jax.models.factory import spade_label_channels
  from spade_jax.platforms import label_conv_kind
  c = spade_config.preset("coco_stuff")
  assert label_conv_kind(c, "cpu") == "gather"  # auto: gather for CPU programs, a convolution for the others
  assert label_conv_kind(c, "tpu") == label_conv_kind(c, "gpu") == "dense"
  assert spade_label_channels(c, "cpu") == 183  # 182 classes + don't-care: SPADE gathers over the one-hot ids
  assert spade_label_channels(c, "tpu") == 0
  c.model.spade_label_conv = "dense"
  assert label_conv_kind(c, "cpu") == "dense" and spade_label_channels(c, "cpu") == 0
  c.model.spade_label_conv = "sparse"
  with pytest.raises(ValueError, match="spade_label_conv must be one of .*'sparse'"):
    label_conv_kind(c, "cpu")


def test_validate_names_every_bad_key_at_once():
  c = spade_config.preset("demo")
  assert spade_config.validate(c) is c
  c.train.batch_size = 0
  c.data.on_bad_sample = "skp"  # a typo that used to pass until the first bad file
  c.model.encoder_input_size = 100
  c.data.crop_size = 16         # with 'normal' (5) upsamplings the first grid would be empty
  c.optim.beta2 = 1.0
  with pytest.raises(UserError) as e:
    spade_config.validate(c)
  for part in ("train.batch_size=0", "data.on_bad_sample='skp' (expected one of error, skip)",
               "model.encoder_input_size=100", "data.crop_size=16", "optim.beta2=1.0"):
    assert part in str(e.value)
  with pytest.raises(UserError, match="model.dtype='float16'"):  # from_dict validates what it reads back
    spade_config.from_dict({"model": {"dtype": "float16"}})


def test_state_mismatch_names_the_keys_that_shape_the_state():
  saved, asked = spade_config.preset("demo"), spade_config.preset("demo")
  assert spade_config.state_mismatch(saved, asked, "W") is None
  asked.train.num_steps, asked.optim.lr, asked.model.dtype = 5, 1e-4, "bfloat16"  # these may change on resume
  assert spade_config.state_mismatch(saved, asked, "W") is None
  asked.model.ngf = 8
  assert spade_config.state_mismatch(saved, asked, "W") == (
      "the checkpoint in W was trained with model.ngf=16; this run asks for 8: use the same value, or a new --workdir")
  asked.train.ema_decay = 0.0  # the demo keeps a weight EMA (0.99): a state without one is another state
  assert "train.ema_decay=0.99" in spade_config.state_mismatch(saved, asked, "W")
  asked.model.ngf, asked.model.ndf = 16, 8  # the discriminator matters to training only
  assert spade_config.state_mismatch(saved, asked, "W", keys=spade_config.SYNTHESIS_KEYS) is None
