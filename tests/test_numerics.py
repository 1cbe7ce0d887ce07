"""TF32 is off while every metric family computes, and the metric JSON says so."""

from __future__ import annotations

import pytest
import torch
from metrics_standins import LinearFeatures, LinearGenerator

from brainlatent.config import load_config
from brainlatent.metrics.evaluate import evaluate
from brainlatent.numerics import module_dtype, numerics_info, strict_float32

torch.set_num_threads(1)

CONFIG = {
    "study": "numerics",
    "seed": 5,
    "evaluate": {
        "batch_size": 16,
        "ppl": {"num_samples": 20},
        "path_profile": {"pairs": 2, "steps": 4},
        "separability": {"num_samples": 40, "repeats": 2, "attributes": ["sex"]},
    },
}
ATTRIBUTES = [{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}]


def flags() -> tuple[bool, bool, str]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()


class SpyGenerator(LinearGenerator):
    """A linear stand-in that records the TF32 flags every time it synthesises images."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[tuple[bool, bool, str]] = []

    def synthesis(self, w, noise=None):
        self.seen.append(flags())
        return super().synthesis(w, noise)


@pytest.fixture
def tf32_on():
    """TF32 allowed everywhere (as a careless caller or a library might leave it); restored afterwards."""
    before = flags()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    assert flags() == (True, True, "medium")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[0], before[1]
    torch.set_float32_matmul_precision(before[2])


@pytest.mark.parametrize("metric", ["ppl", "path_profile", "separability"])
def test_evaluation_runs_with_tf32_off_and_records_it(tf32_on, metric):
    cfg = load_config(CONFIG)
    G = SpyGenerator(z_dim=8, mapping="normalize")
    doc = evaluate(metric, cfg, G, LinearFeatures(), specs=ATTRIBUTES, device="cpu")
    assert G.seen, "the generator was never called"
    assert set(G.seen) == {(False, False, "highest")}
    n = doc["settings"]["numerics"]
    assert (n["cuda_matmul_allow_tf32"], n["cudnn_allow_tf32"], n["float32_matmul_precision"]) == (False, False, "highest")
    assert (n["device"], n["dtype"], n["torch_version"]) == ("cpu", "float32", torch.__version__)


def test_strict_float32_and_numerics_info(tf32_on):
    info = strict_float32()
    assert flags() == (False, False, "highest")
    assert info == numerics_info()
    described = numerics_info("cpu", torch.float64)
    assert described["device"] == "cpu" and described["dtype"] == "float64"
    assert module_dtype(torch.nn.Linear(2, 2).double()) == torch.float64
    assert module_dtype(object()) == torch.float32


class Called(Exception):
    """Raised by the spy: proves the trainer turned TF32 off before touching data or networks."""


def _spy():
    raise Called


@pytest.mark.parametrize("trainer", ["gan", "classifier"])
def test_trainers_turn_tf32_off_first(trainer, monkeypatch, tmp_path):
    import brainlatent.train.classifier as clf
    import brainlatent.train.gan as gan

    cfg = load_config({"study": "numerics", "seed": 1, "gan": {"archs": ["stylegan"]}})
    missing = tmp_path / "no-slices"  # never read: the spy stops the trainer first
    if trainer == "gan":
        monkeypatch.setattr(gan, "strict_float32", _spy)
        with pytest.raises(Called):
            gan.train_gan(cfg, missing, "stylegan", 8, tmp_path / "out", device="cpu")
    else:
        monkeypatch.setattr(clf, "strict_float32", _spy)
        with pytest.raises(Called):
            clf.train_classifier(cfg, missing, tmp_path / "out")
