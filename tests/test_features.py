"""The perceptual feature space: embeddings, probabilities and LPIPS-style distances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainlatent.errors import BrainlatentError
from brainlatent.metrics.features import LPIPSVGG16Distance, PerceptualFeatures, layered_distance, unit_normalise
from brainlatent.models.vgg import VGG16Classifier, VGG16Trunk

torch.set_num_threads(1)
SIGMAS = (0.05, 0.1, 0.3)


def blob_images(n: int, res: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-like discs with a central blob whose radius encodes a 3-class label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(res) - (res - 1) / 2, torch.arange(res) - (res - 1) / 2, indexing="ij")
    rr = torch.hypot(yy, xx)
    head = torch.where(rr < res * 0.42, -0.2, -1.0)
    radius = res * (0.08 + 0.1 * labels.float())
    x = torch.where(rr[None] < radius[:, None, None], torch.tensor(0.8), head[None])
    return x[:, None].float(), labels


def corrupt(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + sigma * noise).clamp(-1, 1)


@pytest.fixture(scope="module")
def random_net() -> VGG16Classifier:
    torch.manual_seed(0)
    return VGG16Classifier({"size": 3}, width=4, fc_width=16, batch_norm=True)


@pytest.fixture(scope="module")
def trained_net() -> VGG16Classifier:
    torch.manual_seed(0)
    net = VGG16Classifier({"size": 3}, width=4, fc_width=16, batch_norm=True, dropout=0.0)
    x, y = blob_images(64, seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    first = None
    for step in range(40):
        idx = torch.arange(step * 16, step * 16 + 16) % 64
        loss = F.cross_entropy(net(x[idx])["size"], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < first  # it did train
    return net.eval()


@pytest.mark.parametrize("which", ["random_net", "trained_net"])
def test_distance_zero_for_identical_and_monotonic_in_noise(which, request):
    pf = PerceptualFeatures(request.getfixturevalue(which), "cpu")
    x, _ = blob_images(8)
    assert torch.equal(pf.distance(x, x.clone()), torch.zeros(8))
    d = torch.stack([pf.distance(x, corrupt(x, s)) for s in SIGMAS])  # 3 x 8
    assert torch.all(d > 0)
    assert torch.all(d[1:] > d[:-1]), d  # per image, strictly increasing with sigma


def test_distance_is_symmetric_and_batch_independent(random_net):
    pf = PerceptualFeatures(random_net, "cpu")
    x, _ = blob_images(7)
    y = corrupt(x, 0.1)
    d = pf.distance(x, y, batch_size=64)
    assert torch.allclose(d, pf.distance(y, x), rtol=1e-5, atol=1e-7)
    assert torch.allclose(d, pf.distance(x, y, batch_size=3), rtol=1e-5, atol=1e-7)


def test_distance_formula_by_hand():
    a = torch.tensor([[[[3.0]], [[4.0]]]])  # one position, channel vector (3, 4) -> unit (0.6, 0.8)
    b = torch.tensor([[[[0.0]], [[2.0]]]])  # -> (0, 1)
    assert torch.allclose(unit_normalise(a).flatten(), torch.tensor([0.6, 0.8]))
    expected = 0.6**2 + 0.2**2
    assert layered_distance([a, a], [b, b]).item() == pytest.approx(2 * expected, rel=1e-6)
    w = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    assert layered_distance([a, a], [b, b], w).item() == pytest.approx(0.36 + 2 * 0.04, rel=1e-6)


def test_embed_and_predict_proba(random_net):
    pf = PerceptualFeatures(random_net, "cpu")
    x, _ = blob_images(5)
    e = pf.embed(x, batch_size=2)
    assert e.shape == (5, 16) and e.device.type == "cpu"
    assert torch.allclose(e, pf.embed(x.numpy()), atol=1e-6)  # arrays (memmaps) work too
    assert torch.allclose(e, random_net.eval().embed(x), atol=1e-6)
    p = pf.predict_proba(x)
    assert p["size"].shape == (5, 3)
    assert torch.allclose(p["size"].sum(1), torch.ones(5), atol=1e-6)
    with pytest.raises(BrainlatentError, match="N x 1 x R x R"):
        pf.embed(torch.zeros(2, 32, 32))


def test_from_file_round_trip(tmp_path, random_net):
    from brainlatent.io import save_torch

    save_torch(tmp_path / "model.pt", {"state_dict": random_net.state_dict(), "model_config": random_net.config, "attributes": []})
    pf = PerceptualFeatures.from_file(tmp_path / "model.pt", "cpu")
    x, _ = blob_images(3)
    assert torch.allclose(pf.embed(x), PerceptualFeatures(random_net, "cpu").embed(x))


# ------------------------------------------------------------------------------------------------
# LPIPS-VGG16 from a user file


def _lpips_state(lin: bool = True, trunk: bool = True) -> dict[str, torch.Tensor]:
    """A state dict in the lpips package's layout, random weights (VGG-16 sized)."""
    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    if trunk:
        vgg = VGG16Trunk(in_channels=3, width=64)
        idx, slice_starts = 0, (0, 4, 9, 16, 23)
        for block in vgg.blocks:
            for layer in block.layers:
                k = sum(idx >= s for s in slice_starts)
                state[f"net.slice{k}.{idx}.weight"] = layer.conv.weight.detach()
                state[f"net.slice{k}.{idx}.bias"] = torch.zeros(layer.conv.out_channels)
                idx += 2
            idx += 1
    if lin:
        for i, c in enumerate((64, 128, 256, 512, 512)):
            state[f"lin{i}.model.1.weight"] = torch.rand(1, c, 1, 1)
    return state


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg16.pth"
    torch.save(_lpips_state(), path)
    return path


def test_lpips_distance_from_file(lpips_file):
    dist = LPIPSVGG16Distance(lpips_file, device="cpu")
    x, _ = blob_images(4)
    assert torch.equal(dist.distance(x, x.clone()), torch.zeros(4))
    d = torch.stack([dist.distance(x, corrupt(x, s)) for s in SIGMAS])
    assert torch.all(d[1:] > d[:-1]), d
    # the trunk really came from the file: layer 'net.slice5.28' is the 13th conv
    state = _lpips_state(lin=False)
    assert torch.equal(dist.trunk.conv_layers()[12].conv.weight, state["net.slice5.28.weight"])


def test_lpips_file_errors(tmp_path):
    with pytest.raises(BrainlatentError, match="absent.pth: LPIPS-VGG16 weights file not found"):
        LPIPSVGG16Distance(tmp_path / "absent.pth", device="cpu")
    lin_only = tmp_path / "vgg.pth"
    torch.save(_lpips_state(trunk=False), lin_only)
    with pytest.raises(BrainlatentError, match="no VGG trunk"):
        LPIPSVGG16Distance(lin_only, device="cpu")
    bad = tmp_path / "bad.pth"
    state = _lpips_state(trunk=False)
    state["lin2.model.1.weight"] = torch.rand(1, 100, 1, 1)
    del state["lin4.model.1.weight"]
    torch.save(state, bad)
    tv = tmp_path / "vgg16_imagenet.pth"
    torch.save({k.replace("net.slice1", "features").replace("net.slice2", "features").replace("net.slice3", "features")
                .replace("net.slice4", "features").replace("net.slice5", "features"): v for k, v in _lpips_state(lin=False).items()}, tv)
    with pytest.raises(BrainlatentError, match="not an LPIPS-VGG16 state dict") as err:
        LPIPSVGG16Distance(bad, device="cpu", trunk_path=tv)
    assert "lin2" in str(err.value) and "lin4" in str(err.value)
    LPIPSVGG16Distance(lin_only, device="cpu", trunk_path=tv)  # lin-only file + separate trunk works
