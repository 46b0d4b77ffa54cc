"""nbsupport's excitation pullback against an independent, module-swap implementation of the source's
Listings 1 and 2 on torchvision architectures (random weights, float64, small inputs).

The reference below is written from the listings :cite:p:`satkiewicz2025tapping`: every ``nn.ReLU`` module is
swapped for one whose backward is ``grad * sigmoid(z / T)`` (Listing 1), every ``nn.MaxPool2d`` for the
straight-through ``hard.detach() + soft - soft.detach()`` over an ``F.unfold`` softmax pooling
(Listing 2). Two differences from ``nbsupport.pullbacks`` are legitimate and tested as such:

* padding: ``F.unfold`` pads with zeros, max-pooling with -inf. After a ReLU every entry is >= 0, so a
  padded zero takes part in the softmax of a border window (ResNet and DenseNet stems:
  ``MaxPool2d(3, 2, padding=1)``). With the padding aligned the two agree to rounding, and
  ``pool_padding_value=0.0`` reproduces the listing's zero padding;
* DenseNet's ``forward`` calls ``F.relu`` on the final features: a module swap cannot see it, so that
  ReLU keeps its vanilla gradient in the reference; nbsupport intercepts the call.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.pullbacks import excitation_pullback

torchvision = pytest.importorskip("torchvision")
T = 0.3


class TwoWayReLUFunction(torch.autograd.Function):
    """Listing 1."""

    @staticmethod
    def forward(ctx, z, temperature=0.3):
        ctx.save_for_backward(z)
        ctx.temperature = temperature
        return F.relu(z)

    @staticmethod
    def backward(ctx, grad_output):
        (z,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(z / ctx.temperature), None


class TwoWayReLU(nn.Module):
    def forward(self, z):
        return TwoWayReLUFunction.apply(z, T)


class SurrogateSoftMaxPool2d(nn.MaxPool2d):
    """Listing 2 (int kernel, stride and padding); ``pad=-inf`` aligns the soft branch's padding with max-pooling."""

    def __init__(self, pool: nn.MaxPool2d, pad: float):
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)
        self.pad = pad

    def soft(self, x):
        b, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.pad == 0.0:
            x_unf = F.unfold(x, kernel_size=k, stride=s, padding=p)
        else:
            x_unf = F.unfold(F.pad(x, (p, p, p, p), value=self.pad), kernel_size=k, stride=s)
        x_unf = x_unf.view(b, c, k * k, -1)
        weights = F.softmax(x_unf / T, dim=2)
        pooled = (x_unf.nan_to_num(neginf=0.0) * weights).sum(dim=2)
        return pooled.view(b, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)

    def forward(self, x):
        soft = self.soft(x)
        hard = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode)
        return hard.detach() + (soft - soft.detach())


def module_swap(model: nn.Module, pad: float) -> nn.Module:
    swapped = copy.deepcopy(model)
    for parent in list(swapped.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, TwoWayReLU())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, SurrogateSoftMaxPool2d(child, pad))
    return swapped


def reference_pullback(model, x, target):
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return g


def _random_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
    return model


def _vgg11_bn():
    # torchvision's VGG11_BN feature extractor; a narrow head (same layer types) instead of 25088 -> 4096 -> 4096
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["A"], batch_norm=True)
    head = nn.Sequential(nn.Linear(512, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(32, 10))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def _build(name):
    torch.manual_seed(0)
    if name == "vgg11_bn":
        model = _vgg11_bn()
    else:
        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    return _random_bn(model, 1).double().eval()


def _inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([3, 7])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121"])
def test_pullback_equals_the_module_swap_of_listings_1_and_2(name):
    model = _build(name)
    x, target = _inputs()
    ours = excitation_pullback(model, x, target, T)
    aligned = module_swap(model, float("-inf"))
    if name == "densenet121":
        # the final F.relu in DenseNet.forward is invisible to a module swap: without it the two differ
        raw = reference_pullback(aligned, x, target)
        assert _rel(raw, ours) > 1e-3
        relu = TwoWayReLU()
        aligned.forward = lambda inp: aligned.classifier(torch.flatten(F.adaptive_avg_pool2d(relu(aligned.features(inp)),
                                                                                             (1, 1)), 1))
    reference = reference_pullback(aligned, x, target)
    assert _rel(ours, reference) < 1e-12
    with torch.no_grad():
        torch.testing.assert_close(model(x), aligned(x), rtol=0, atol=0)  # forward passes identical


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
@pytest.mark.slow
def test_zero_padding_of_listing_2_changes_the_pullback_and_is_reproduced(name):
    model = _build(name)
    x, target = _inputs()
    listing = module_swap(model, 0.0)
    if name == "densenet121":
        relu = TwoWayReLU()
        listing.forward = lambda inp: listing.classifier(torch.flatten(F.adaptive_avg_pool2d(relu(listing.features(inp)),
                                                                                             (1, 1)), 1))
    reference = reference_pullback(listing, x, target)
    assert _rel(excitation_pullback(model, x, target, T, pool_padding_value=0.0), reference) < 1e-12
    assert _rel(excitation_pullback(model, x, target, T), reference) > 1e-4  # -inf padding differs at the borders


def test_vgg_has_no_padded_pool_so_padding_does_not_matter():
    model = _build("vgg11_bn")
    x, target = _inputs()
    torch.testing.assert_close(excitation_pullback(model, x, target, T),
                               excitation_pullback(model, x, target, T, pool_padding_value=0.0), rtol=0, atol=0)


def test_legacy_densenet_checkpoint_is_remapped_and_loaded(tmp_path):
    import re

    from nbsupport.pullbacks import load_imagenet_checkpoint, remap_legacy_densenet_keys

    torch.manual_seed(3)
    model = torchvision.models.densenet121(weights=None)
    state = model.state_dict()
    # the layout of torchvision's densenet121-a639ec97.pth: "norm.1" where the module now has "norm1"
    # (the legacy file predates BatchNorm's num_batches_tracked; the load fills it in)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    assert sum(k != j for k, j in zip(state, legacy)) > 100
    with pytest.raises(RuntimeError):
        torchvision.models.densenet121(weights=None).load_state_dict(legacy)
    assert list(remap_legacy_densenet_keys(legacy)) == [k for k in state if not k.endswith("num_batches_tracked")]
    torch.save(legacy, tmp_path / "densenet121-legacy.pth")
    loaded = load_imagenet_checkpoint("densenet121", tmp_path / "densenet121-legacy.pth")
    assert not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(RuntimeError):
        load_imagenet_checkpoint("densenet121", tmp_path / "resnet18.pth")  # strict
    with pytest.raises(ValueError, match="name"):
        load_imagenet_checkpoint("no_such_model", tmp_path / "resnet18.pth")


def test_padding_value_is_checked():
    model = _build("vgg11_bn")
    x, target = _inputs()
    with pytest.raises(ValueError, match="padding_value"):
        excitation_pullback(model, x, target, T, pool_padding_value=1.0)
