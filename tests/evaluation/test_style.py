"""The demo's style scores: the colour rule on hand-made cases (a synthesis in the photo's own style scores 100%,
one in another style 0%) and the evaluation report's style fields, through the Evaluator with stand-in generators."""
import numpy as np
import pytest

from configs import demo as demo_config
from spade_jax.data import demo
from spade_jax.evaluation import protocol, run, style

SIZE, NUM_TRAIN, NUM_VAL = 32, 48, 9


def _render_all(labels, styles, seed=0):
  return np.stack([demo.render(lab, np.random.default_rng([seed, i]), demo.STYLES[s])
                   for i, (lab, s) in enumerate(zip(labels, styles))])


def _samples(split, n):
  labs, _, names = zip(*(demo.sample(0, split, i, SIZE) for i in range(n)))
  return np.stack(labs), np.array([demo.STYLES.index(s) for s in names])


def test_rule_on_hand_made_cases():
  labels, styles = _samples("train", 60)
  judge = style.StyleJudge.fit(_render_all(labels, styles), labels, styles)
  vl, vs = _samples("val", 30)
  assert set(vs) == {0, 1, 2}
  scores = style.StyleScores()
  right = _render_all(vl, vs, seed=1)                      # a perfect synthesis: the photo's own style
  scores.update_guided(vs, judge.classify(right, vl), style.features(right, vl))
  assert scores.scores()["accuracy"] == 1.0
  wrong = _render_all(vl, (vs + 1) % 3, seed=1)             # every image in another style: day -> sunset -> night
  scores = style.StyleScores()
  scores.update_guided(vs, judge.classify(wrong, vl))
  s = scores.scores()
  assert s["accuracy"] == 0.0 and all(v == 0.0 for v in s["per_style_accuracy"].values())
  assert np.trace(np.array(s["confusion"]["counts"])) == 0 and s["num_images"] == 30
  # random codes: counted per judged style
  scores.update_random(judge.classify(_render_all(vl, np.zeros_like(vs)), vl))
  assert scores.scores()["random_code_shares"] == {"day": 1.0, "sunset": 0.0, "night": 0.0}


def test_features_use_the_label_map_regions():
  lab = np.zeros((1, 4, 4), np.uint8)
  lab[0, 2:] = demo.GRASS                                   # top half sky, bottom half grass
  img = np.zeros((1, 4, 4, 3), np.uint8)
  img[0, :2] = (10, 20, 30)
  img[0, 2:] = (50, 60, 70)
  np.testing.assert_allclose(style.features(img, lab), [[10, 20, 30, 50, 60, 70]])
  np.testing.assert_allclose(style.features(img, np.full((1, 4, 4), demo.GRASS)), [[30, 40, 50, 30, 40, 50]])


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = demo_config.get_config()
  c.data.root = str(demo.generate(tmp_path_factory.mktemp("landscapes"), NUM_TRAIN, NUM_VAL, SIZE, seed=0))
  c.data.load_size = c.data.crop_size = SIZE
  return c


def _true_style(i):
  return demo.STYLES.index(demo.sample(0, "val", i, SIZE)[2])


def _stand_in(wrong: bool):
  """A generator stand-in: with style images it renders each label map in the photo's style (or the next style
  when `wrong`); with random codes it renders style (index mod 3)."""
  def synthesize(labels, instances, first, style=None):
    out = []
    for j, lab in enumerate(labels):
      i = first + j
      s = (_true_style(min(i, NUM_VAL - 1)) + int(wrong)) % 3 if style is not None else i % 3
      out.append(demo.render(np.asarray(lab, np.uint8), np.random.default_rng([7, i]), demo.STYLES[s]))
    return np.stack(out)
  return synthesize


def test_evaluator_report_has_style_fields(config):
  ev = protocol.Evaluator(config, (SIZE, SIZE), fid=False, segmenter="none", batch_size=4, style_rounds=3)
  report, _ = ev(_stand_in(wrong=False), step=5)
  s = report["style"]
  assert s["accuracy"] == 1.0 and s["num_images"] == NUM_VAL
  assert s["real_images"]["accuracy"] == 1.0                 # the ceiling: the rule on the real val images
  assert s["num_random_samples"] == 3 * NUM_VAL and s["random_code_rounds"] == 3
  assert s["random_code_shares"] == pytest.approx({"day": 1 / 3, "sunset": 1 / 3, "night": 1 / 3})
  n = 3 * NUM_VAL  # the binomial standard error of each share, and the log line that shows it
  assert s["random_code_share_stderr"] == pytest.approx({k: (2 / 9 / n) ** 0.5 for k in demo.STYLES})
  assert f"day 0.33 +- {(2 / 9 / n) ** 0.5:.2f}" in run.summary(report) and f"({n} codes)" in run.summary(report)
  assert set(s["per_style_accuracy"]) == set(demo.STYLES) and "nearest centroid" in s["protocol"]
  assert set(s["mean_sky_rgb"]["real"]) == set(demo.STYLES)
  sc = protocol.scalars(report)
  assert sc["eval/style_accuracy"] == 1.0 and sc["eval/style_accuracy_real"] == 1.0
  assert {"eval/style_share_day", "eval/style_share_sunset", "eval/style_share_night"} <= set(sc)

  report, _ = ev(_stand_in(wrong=True), step=6)
  assert report["style"]["accuracy"] == 0.0 and report["style"]["real_images"]["accuracy"] == 1.0


def test_no_style_scores_without_vae_or_record(config, tmp_path):
  c = config.copy_and_resolve_references()
  c.model.use_vae = False
  report, _ = protocol.Evaluator(c, (SIZE, SIZE), fid=False, segmenter="none", batch_size=4)(
      lambda labels, instances, first: np.zeros(labels.shape + (3,), np.uint8))
  assert "style" not in report and "use_vae=False" in report["style_skipped"]

  root = demo.generate(tmp_path / "old", 6, 2, SIZE, seed=0)
  (root / "val" / style.STYLES_FILE).unlink()                # a data set without the style record
  c = config.copy_and_resolve_references()
  c.data.root = str(root)
  report, _ = protocol.Evaluator(c, (SIZE, SIZE), fid=False, segmenter="none", batch_size=2)(_stand_in(False))
  assert "style" not in report and style.STYLES_FILE in report["style_skipped"]
