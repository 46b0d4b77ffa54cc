"""Small models and one training loop whose results are cached by configuration.

Training in a chapter is a pure function of its configuration (architecture, initial weights,
data, optimiser settings, seed), so :func:`train` stores the trained weights under a hash of that
configuration and a second build loads them instead of training again.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ._validate import batch, int_seed, integer, module, real, torch_rng
from .data import data_root

__all__ = ["mlp", "vgg_cnn", "small_resnet", "MaxPool2d", "init_normal_", "train", "train_seeds", "auto_method", "TrainResult",
           "config_hash", "callable_key", "module_code_key", "evaluate"]


def mlp(widths: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    """A fully connected network ``Linear, act, Linear, act, ..., Linear``.

    Parameters
    ----------
    widths : sequence of int
        ``[d_in, m_1, ..., m_L, d_out]``: input size, hidden widths, output size (at least two
        entries; two entries give a single linear layer).
    activation : callable returning an ``nn.Module``
        Called once per hidden layer, so each layer has its own module (hooks can tell them apart).
    bias : bool
        Whether the linear layers have biases.

    Returns
    -------
    torch.nn.Sequential
        Modules alternate ``Linear`` and activation; the last module is ``Linear``.
    """
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"widths must be a sequence of at least two positive ints, got {widths!r}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must be a sequence of at least two positive ints, got {widths!r}")
    widths = [integer(w, f"widths[{i}]", minimum=1) for i, w in enumerate(widths)]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(activation())
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
    return nn.Sequential(*layers)


def vgg_cnn(channels: Sequence[int] = (16, 32), n_classes: int = 10, in_channels: int = 1,
            image_size: int = 28) -> nn.Sequential:
    """A VGG-style CNN: per stage ``Conv3x3-BN-ReLU-Conv3x3-BN-ReLU-MaxPool2``, then a linear head.

    Parameters
    ----------
    channels : sequence of int
        Channels of each stage (each halves the resolution).
    n_classes, in_channels, image_size : int
        Square inputs ``(in_channels, image_size, image_size)``.

    Returns
    -------
    nn.Sequential
        The stages, ``Flatten`` and a ``Linear`` head; ``nn.ReLU``
        modules (in place) and max-pooling modules (:class:`MaxPool2d`, an ``nn.MaxPool2d``) as in
        torchvision's VGG11_BN.
    """
    channels, n_classes, in_channels, image_size = _check_cnn(channels, n_classes, in_channels, image_size)
    layers: list[nn.Module] = []
    prev = in_channels
    for width in channels:
        for _ in range(2):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(MaxPool2d(2))
    side = image_size // 2 ** len(channels)
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(prev * side * side, n_classes))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward pass without autograd runs in channels-last memory order.

    A maximum is exact in any memory order, so the output is the same, bit for bit (and returned
    in the usual contiguous order); but PyTorch's CPU kernel for contiguous (N, C, H, W) inputs
    with few channels is several times slower than its channels-last kernel, which makes a small
    CNN's evaluation about a third faster (``benchmarks/bench_evaluate.py``). With autograd on
    (training, gradients, pullbacks, which intercept ``F.max_pool2d``) it is ``nn.MaxPool2d``'s
    forward pass, so training and every gradient are unchanged; so it is inside ``torch.func``
    transforms (``vmap`` cannot ask a tensor for its channels-last layout).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape (N, C, H, W) -> pooled; any other input as ``nn.MaxPool2d``."""
        if (torch.is_grad_enabled() or self.return_indices or x.ndim != 4
                or torch._C._functorch.is_functorch_wrapped_tensor(x)):
            return super().forward(x)
        pooled = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                              self.padding, self.dilation, ceil_mode=self.ceil_mode)
        return pooled.contiguous()


def _check_cnn(channels, n_classes, in_channels, image_size) -> tuple[list[int], int, int, int]:
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
        raise ValueError(f"channels must be a non-empty sequence of ints >= 1, got {channels!r}")
    channels = [integer(c, "channels", minimum=1) for c in channels]
    if not channels:
        raise ValueError("channels must be a non-empty sequence of ints >= 1, got an empty one")
    return (channels, integer(n_classes, "n_classes", minimum=1), integer(in_channels, "in_channels", minimum=1),
            integer(image_size, "image_size", minimum=2 ** len(channels)))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1) shortcut; ReLUs called as ``F.relu`` / ``.relu()``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


def small_resnet(channels: Sequence[int] = (16, 32), n_classes: int = 10, in_channels: int = 1,
                 image_size: int = 28) -> nn.Sequential:
    """A small ResNet: stem ``Conv3x3-BN-ReLU-MaxPool2``, one basic block per stage, linear head.

    Inside the blocks the ReLUs are functional (``F.relu(..., inplace=True)`` and ``Tensor.relu()``, as
    in torchvision's DenseNet), so a module swap would miss them; the stem has ``nn.ReLU`` and
    a max-pooling ``MaxPool2d(3, 2, padding=1)`` (:class:`MaxPool2d`, an ``nn.MaxPool2d``) as in
    torchvision's ResNets.

    Parameters
    ----------
    channels : sequence of int
        Channels of the stem and first block, then of each further block (stride 2).
    n_classes, in_channels, image_size : int
        Square inputs ``(in_channels, image_size, image_size)``.

    Returns
    -------
    nn.Sequential
        Stem, blocks, ``Flatten`` and a ``Linear`` head.
    """
    channels, n_classes, in_channels, image_size = _check_cnn(channels, n_classes, in_channels, image_size)
    stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]),
                         nn.ReLU(inplace=True), MaxPool2d(3, 2, padding=1))
    blocks = [_BasicBlock(channels[0], channels[0], 1)]
    blocks += [_BasicBlock(a, b, 2) for a, b in zip(channels[:-1], channels[1:])]
    side = (image_size - 1) // 2 + 1  # max-pool 3x3, stride 2, padding 1
    for _ in channels[1:]:
        side = (side - 1) // 2 + 1  # 3x3 convolution, stride 2, padding 1
    return nn.Sequential(stem, *blocks, nn.Flatten(), nn.Linear(channels[-1] * side * side, n_classes))


def init_normal_(model: nn.Module, C_W: float, C_b: float = 0.0, seed: int = 0) -> nn.Module:
    """Initialise every ``nn.Linear`` in place: weights N(0, C_W / fan_in), biases N(0, C_b).

    The initialisation of chapter 5 (:math:`C_W = 1` is Glorot-like for linear nets, :math:`C_W = 2`
    is He's for ReLU nets :cite:p:`he2015delving`).

    Parameters
    ----------
    model : nn.Module
    C_W, C_b : float
        Weight and bias variances, >= 0.
    seed : int, torch.Generator or numpy.random.Generator
        Source of the draws (``nbsupport._validate.torch_rng``: an int seeds a private generator, a
        generator is used and advanced; ``None`` is refused and the global one is untouched).

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    C_W = real(C_W, "C_W", low=0.0, low_inclusive=True)
    C_b = real(C_b, "C_b", low=0.0, low_inclusive=True)
    generator = torch_rng(seed, name="seed")
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            w = torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64)
            layer.weight.copy_(w * (C_W / layer.in_features) ** 0.5)
            if layer.bias is not None:
                b = torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64)
                layer.bias.copy_(b * C_b**0.5)
    return model


@dataclass
class TrainResult:
    """What every training loop of the package returns: :func:`train`, :func:`train_seeds` (one per
    seed), :func:`nbsupport.gating.train_latent_gates` (and ``train_latent_gates_many``, one per
    model) and :func:`nbsupport.gating.fit_variational`.

    Attributes
    ----------
    history : list of dict
        One record per epoch (a loop that counts ``epochs``: full passes over the shuffled data) or
        per step (a loop that counts ``steps``: one minibatch drawn afresh each), in order. Every
        record has ``"epoch"`` or ``"step"`` (counted from 1) and ``"loss"``, the objective the loop
        minimises, averaged over that epoch's samples or that step's minibatch; the loop's own
        entries follow (:func:`train`: ``test_loss`` and ``test_accuracy`` when test data was
        given; ``fit_variational``: the exact ``elbo`` and ``log_marginal``).
    checkpoints : dict of int to state_dict
        Weights after the requested epochs (epoch 0 is the initialisation); :func:`train` only.
    key : str
        The configuration hash the weights are cached under; ``""`` for the loops that are not
        cached (those of ``nbsupport.gating``).
    from_cache : bool
        Whether the weights were loaded instead of trained.
    """

    history: list[dict] = field(default_factory=list)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    key: str = ""
    from_cache: bool = False


def callable_key(fn: Callable) -> str:
    """A text that changes when a function's behaviour can.

    It covers the qualified name, the bytecode with its constants and referenced names (nested
    functions and lambdas included), the defaults, the closure values and the globals the code
    reads (modules by name and version, functions recursively, other values through their ``repr``),
    recursively through ``functools.partial``. So ``lambda o, t: F.cross_entropy(o, t)`` and
    ``lambda o, t: F.nll_loss(o, t)`` get different keys, and a key is the same in every process
    (no memory addresses enter it). :func:`train` also hashes the torch version with it.
    """
    return _callable_key(fn, frozenset())


def _callable_key(fn: Callable, seen: frozenset) -> str:
    if isinstance(fn, functools.partial):
        return (f"partial({_callable_key(fn.func, seen)}, {[_value_key(a, seen) for a in fn.args]!r}, "
                f"{sorted((k, _value_key(v, seen)) for k, v in fn.keywords.items())!r})")
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    code = getattr(fn, "__code__", None)
    if isinstance(fn, nn.Module):  # a loss module: its settings and tensors (class weights, ...)
        settings = {k: v for k, v in vars(fn).items() if not k.startswith("_") and k != "training"}
        return f"{name}:{_value_key(settings, seen)}:{_value_key(dict(fn.state_dict()), seen)}"
    if code is None or id(fn) in seen:  # builtins, classes, recursion: the name identifies them
        return name
    seen = seen | {id(fn)}
    fn_globals = getattr(fn, "__globals__", {})
    names = sorted(_code_names(code))
    referenced = [(n, _value_key(fn_globals[n], seen)) for n in names if n in fn_globals]
    cells = [_value_key(c.cell_contents, seen) for c in (fn.__closure__ or ())]
    digest = hashlib.sha256(_code_text(code).encode()).hexdigest()[:16]
    return (f"{name}:{digest}:{_value_key(fn.__defaults__, seen)}:{_value_key(fn.__kwdefaults__, seen)}:"
            f"{cells!r}:{referenced!r}")


def _code_text(code) -> str:
    """Bytecode, names and constants of a code object and of the code objects nested in it."""
    consts = [_const_text(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{code.co_names}|{code.co_varnames}|{consts}"


def _const_text(c) -> str:
    """A code constant as text, the same in every process: a frozenset constant (``x in {"a", "b"}``)
    iterates in an order that depends on string hashing, which changes from process to process."""
    if hasattr(c, "co_code"):
        return _code_text(c)
    if isinstance(c, frozenset):
        return f"frozenset({sorted(_const_text(v) for v in c)})"
    if isinstance(c, tuple):
        return f"tuple({[_const_text(v) for v in c]})"
    return repr(c)


def _code_names(code) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            names |= _code_names(c)
    return names


def _value_key(value, seen: frozenset) -> str:
    """A process-independent text for a value a function can read."""
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__} {getattr(value, '__version__', '')}"
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return f"tensor{tuple(t.shape)}{t.dtype}:{hashlib.sha256(raw).hexdigest()[:16]}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({[_value_key(v, seen) for v in value]})"
    if isinstance(value, dict):
        return f"dict({sorted((repr(k), _value_key(v, seen)) for k, v in value.items())})"
    if isinstance(value, (set, frozenset)):  # iteration order depends on the process's string hashing
        return f"{type(value).__name__}({sorted(_value_key(v, seen) for v in value)})"
    if callable(value) and not isinstance(value, type):
        return _callable_key(value, seen)
    return _ADDRESS.sub("", repr(value))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def module_code_key(model: nn.Module) -> str:
    """A text that changes when the code run by ``model``'s forward pass can.

    For every class of every submodule, and every base class up to ``nn.Module``: the
    :func:`callable_key` of each function its body defines (``forward`` and the helpers it may call;
    static and class methods and properties unwrapped), plus any ``forward`` set on an instance. Two
    classes with the same name and ``repr`` but different ``forward`` get different keys.
    """
    module(model)
    classes: list[type] = []
    parts = []
    for name, m in model.named_modules():
        for cls in type(m).__mro__:
            if cls not in classes and cls not in (nn.Module, object):
                classes.append(cls)
        if "forward" in vars(m):
            parts.append(f"instance {name}.forward:{callable_key(m.forward)}")
    for cls in classes:
        for attr, value in vars(cls).items():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                parts.append(f"{cls.__module__}.{cls.__qualname__}.{attr}:{callable_key(value)}")
    return "\n".join(parts)


def config_hash(model: nn.Module, tensors: Sequence[torch.Tensor], **config) -> str:
    """A hex digest of the architecture, the current weights, the data and the settings.

    Parameters
    ----------
    model : nn.Module
        Its ``repr``, every parameter and buffer, and the code of its module classes (see
        :func:`module_code_key`) enter the hash.
    tensors : sequence of Tensor
        Data tensors; their shape, dtype and bytes enter the hash.
    **config
        Settings, hashed through their ``repr`` (sorted by name).
    """
    module(model)
    h = hashlib.sha256(repr(model).encode())
    h.update(module_code_key(model).encode())
    for name, t in list(model.state_dict().items()) + [(f"data{i}", t) for i, t in enumerate(tensors)]:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        # the bytes read in place (a memoryview, no copy): the digest is the same as of .tobytes()
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    h.update(repr(sorted(config.items())).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=nn.functional.cross_entropy,
             batch_size: int = 512) -> tuple[float, float]:
    """Mean loss and accuracy (argmax of the output) of ``model`` on ``(x, y)``, in eval mode.

    Batches of 512 keep a small CNN's activations in cache: on two CPU cores they evaluate the test
    set about twice as fast as batches of 4096 (``benchmarks/bench_evaluate.py``; the logits agree
    to rounding, about 1e-7, since the kernels block the batch differently).

    Parameters
    ----------
    x : Tensor, shape (N, ...)
    y : Tensor, shape (N,), class indices

    Returns
    -------
    loss, accuracy : float
    """
    x, y = _check_data((x, y), name="(x, y)")
    batch_size = integer(batch_size, "batch_size", minimum=1)
    batch(model, x, y, loss_fn, name="")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            out = model(xb)
            total_loss += float(loss_fn(out, yb, reduction="sum"))
            correct += int((out.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return total_loss / len(x), correct / len(x)


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("NBSUPPORT_WEIGHTS")
    return Path(env).expanduser() if env else data_root() / "weights"


@dataclass(frozen=True)
class _Options:
    """:func:`train`'s settings, checked and normalised to plain Python values."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    optimizer: str
    loss_fn: Callable
    test_data: tuple | None
    checkpoints: list
    cache: bool
    cache_dir: object
    progress: bool
    start_epoch: int = 0


def _options(*, epochs, lr=1e-3, batch_size=128, weight_decay=0.0, optimizer="adam",
             loss_fn=nn.functional.cross_entropy, test_data=None, checkpoints=(), cache=True, cache_dir=None,
             progress=True, start_epoch=0) -> _Options:
    # plain Python numbers from here on, so that the cache key does not depend on a scalar's type
    epochs = integer(epochs, "epochs", minimum=1)
    start_epoch = integer(start_epoch, "start_epoch", minimum=0)
    if start_epoch >= epochs:
        raise ValueError(f"start_epoch must be < epochs = {epochs}, got {start_epoch}")
    batch_size = integer(batch_size, "batch_size", minimum=1)
    lr = real(lr, "lr", low=0.0)
    weight_decay = real(weight_decay, "weight_decay", low=0.0, low_inclusive=True)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    checkpoints = sorted({integer(c, "checkpoints", minimum=0) for c in checkpoints})
    if any(c > epochs or c < start_epoch for c in checkpoints):
        raise ValueError(f"checkpoints must be ints in [{start_epoch}, {epochs}], got {checkpoints!r}")
    return _Options(epochs, lr, batch_size, weight_decay, optimizer, loss_fn,
                    _check_data(test_data, "test_data") if test_data is not None else None, checkpoints, bool(cache), cache_dir,
                    bool(progress), start_epoch)


def _check_data(data, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError(f"{name} must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name} must be a pair (x, y) of equal non-zero length, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _train_key(model: nn.Module, x, y, o: _Options, rng_key: dict, **extra) -> str:
    """The cache key of training ``model`` (its current weights) with options ``o`` and the minibatch
    order's source ``rng_key`` (``{"seed": s}`` for an int seed, as before ``rng`` replaced ``seed``,
    so the cached weights keep their keys)."""
    tensors = [x, y] + (list(o.test_data) if o.test_data is not None else [])
    return config_hash(model, tensors, epochs=o.epochs, lr=o.lr, batch_size=o.batch_size,
                       weight_decay=o.weight_decay,
                       **({"optimizer": o.optimizer} if o.optimizer != "adam" else {}),
                       loss_fn=callable_key(o.loss_fn), torch_version=torch.__version__,
                       # kernels and parallel reductions round differently on another device or thread count
                       device=next(model.parameters()).device.type, threads=torch.get_num_threads(),
                       checkpoints=o.checkpoints, **rng_key,
                       **({"start_epoch": o.start_epoch} if o.start_epoch else {}), **extra)


def _load(model: nn.Module, path: Path, key: str) -> TrainResult:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["final"])
    model.eval()
    return TrainResult(saved["history"], saved["checkpoints"], key, from_cache=True)


def _save(path: Path, final: dict, result: TrainResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"final": final, "history": result.history, "checkpoints": result.checkpoints}, tmp)
    tmp.replace(path)


def _optimiser(o: _Options, params) -> torch.optim.Optimizer:
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    loss_fn: Callable = nn.functional.cross_entropy,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoints: Sequence[int] = (),
    rng=0,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    start_epoch: int = 0,
) -> TrainResult:
    """Train ``model`` in place on shuffled minibatches; cache the result.

    Parameters
    ----------
    model : nn.Module
        Trained in place; on a cache hit its weights are loaded instead.
    data : (x, y)
        Training inputs ``x`` of shape (N, ...) and targets ``y`` of shape (N,).
    epochs : int
        Number of passes over the data, >= 1 (counting the ``start_epoch`` ones already made).
    lr, weight_decay : float
        Learning rate (> 0) and weight decay (>= 0).
    optimizer : {"adam", "sgd"}
        Adam, or SGD with momentum 0.9.
    batch_size : int
        Minibatch size, >= 1.
    loss_fn : callable
        ``loss_fn(output, target)`` returning the mean loss; must accept ``reduction="sum"`` when
        ``test_data`` is given. Enters the cache key through :func:`callable_key`.
    test_data : (x, y), optional
        Evaluated after every epoch (loss and accuracy recorded in the history).
    checkpoints : sequence of int
        Epochs in ``[start_epoch, epochs]`` after which to keep a copy of the weights
        (``start_epoch``: before training).
    rng : int, torch.Generator or numpy.random.Generator
        Source of the minibatch order (the package's rule, ``nbsupport._validate.torch_rng``): an
        int >= 0 seeds a private generator (``rng=s`` is the old ``seed=s``, with the same order and
        the same cache entries); a CPU ``torch.Generator`` is used and advanced, its state at the
        call entering the cache key, and on a cache hit it is advanced as training would have
        advanced it; a numpy Generator gives one seed. The global random state is untouched. The
        seed is the unit of replication of a trained network: pass the seeds as ints.
    cache : bool
        Load from and store to the cache.
    cache_dir : path, optional
        Default ``$NBSUPPORT_WEIGHTS`` if set (CI points it at an empty folder to build from a cold
        cache), else ``<data_root()>/weights``.
    progress : bool
        Show a tqdm progress bar over the minibatches.
    start_epoch : int
        Resume a training: ``model`` holds the weights after epoch ``start_epoch`` (< ``epochs``)
        of ``train(..., rng=seed)``, and the epochs ``start_epoch + 1`` to ``epochs`` run on the
        same minibatches as there (the orders of the first ``start_epoch`` epochs are drawn and
        skipped). The optimiser starts afresh (its state is not kept in checkpoints), so the result
        is not that of one uninterrupted training. The history counts epochs from
        ``start_epoch + 1``. With 0 (default) nothing changes, cache keys included.

    Returns
    -------
    TrainResult
    """
    x, y = _check_data(data)
    o = _options(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, optimizer=optimizer,
                 loss_fn=loss_fn, test_data=test_data, checkpoints=checkpoints, cache=cache, cache_dir=cache_dir,
                 progress=progress, start_epoch=start_epoch)
    batch(model, x, y, o.loss_fn)
    if o.test_data is not None:
        batch(model, *o.test_data, o.loss_fn, name="test_data")
    generator, rng_key = _minibatch_rng(rng)
    key = _train_key(model, x, y, o, rng_key)
    path = _cache_dir(cache_dir) / f"{key}.pt"
    if cache and path.is_file():
        for _ in range(o.epochs):  # the caller's generator ends where training would leave it
            torch.randperm(len(x), generator=generator)
        return _load(model, path, key)

    def snapshot():
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    device = next(model.parameters()).device
    optimiser = _optimiser(o, model.parameters())
    generator = _skip_epochs(generator, len(x), o.start_epoch)
    result = TrainResult(key=key)
    if o.start_epoch in o.checkpoints:
        result.checkpoints[o.start_epoch] = snapshot()
    n_batches = -(-len(x) // batch_size)
    bar = tqdm(total=(o.epochs - o.start_epoch) * n_batches, desc="training", disable=not progress, leave=False)
    model.train()
    for epoch in range(o.start_epoch + 1, o.epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        running = 0.0
        for idx in order.split(o.batch_size):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = loss_fn(model(xb), yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += loss.item() * len(idx)
            bar.update()
        record = {"epoch": epoch, "loss": running / len(x)}
        if test_data is not None:
            record["test_loss"], record["test_accuracy"] = evaluate(model, *test_data, loss_fn=loss_fn)
        result.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if epoch in o.checkpoints:
            result.checkpoints[epoch] = snapshot()
    bar.close()
    model.eval()
    if cache:
        _save(path, snapshot(), result)
    return result


def _minibatch_rng(rng) -> tuple[torch.Generator, dict]:
    """:func:`train`'s CPU generator of the minibatch order from ``rng``, and what of it enters the
    cache key: the seed of an int (or of a numpy Generator's draw), the state of a torch Generator."""
    if isinstance(rng, torch.Generator):
        generator = torch_rng(rng, None)
        state = generator.get_state().numpy().tobytes()
        return generator, {"rng_state": hashlib.sha256(state).hexdigest()[:16]}
    seed = int_seed(rng, "rng")
    return torch.Generator().manual_seed(seed), {"seed": seed}


def _skip_epochs(generator: torch.Generator, n: int, epochs: int) -> torch.Generator:
    """Draw and discard the minibatch orders of ``epochs`` epochs (as :func:`train` draws them)."""
    for _ in range(epochs):
        torch.randperm(n, generator=generator)
    return generator


_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Identity)


def auto_method(model: nn.Module) -> str:
    """The route :func:`train_seeds` takes with ``method="auto"`` for models like ``model``.

    ``"vmap"`` for networks made of ``nn.Linear`` layers and parameter-free elementwise activations
    (the book's MLPs), where training the seeds together measured faster on this project's CPUs
    (``benchmarks/bench_seeds.py``); ``"loop"`` for everything else: convolutional networks (vmapped
    convolutions become grouped convolutions, which measured slower on CPU than separate ones),
    models with buffers (BatchNorm), dropout or other modules not listed.
    """
    leaves = [m for m in module(model).modules() if not list(m.children())]
    if not leaves or any(True for _ in model.buffers()):
        return "loop"
    return "vmap" if all(isinstance(m, (nn.Linear, *_ELEMENTWISE)) for m in leaves) else "loop"


def train_seeds(
    make_model: Callable[[int], nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    seeds: Sequence[int],
    *,
    method: str = "auto",
    **train_kwargs,
) -> list[tuple[nn.Module, TrainResult]]:
    """Train one freshly initialised model per seed, all seeds at once; results cached by configuration.

    Seed ``s`` builds its model with ``make_model(s)`` and trains it as ``train(model, data, rng=s,
    **train_kwargs)`` would: the same initial weights, its own minibatch order drawn from ``s``,
    the same optimiser arithmetic and history.

    Parameters
    ----------
    make_model : callable
        ``make_model(seed)`` returns a freshly initialised ``nn.Module`` (the seed fixes its
        initial weights); every seed's model has the same architecture, dtype and device.
    data : (x, y)
        As for :func:`train`.
    seeds : sequence of int
        Distinct seeds >= 0, at least one (K of them); each seeds both ``make_model`` and the
        minibatch order.
    method : {"auto", "vmap", "loop"}
        ``"loop"``: one :func:`train` call per seed (the same results and cache entries as those
        calls). ``"vmap"``: the K models' parameters and buffers stacked
        (``torch.func.stack_module_state``) and trained together, each step one ``vmap`` of
        ``functional_call`` over the K minibatches ``[K, batch_size, ...]`` and one optimiser step
        over the stacked tensors (Adam and SGD act elementwise, so this is each seed's own optimiser). Batched kernels
        round differently from the loop's, so the weights agree with the loop's only to rounding
        (its growth over training included); BatchNorm buffers are updated per seed. Works for
        every model that ``torch.func.vmap`` can run (no dropout). ``"auto"``: :func:`auto_method`
        of the first model (the MLPs train with vmap, the CNNs in the loop, as measured).
    **train_kwargs
        :func:`train`'s keywords (``epochs``, ``lr``, ``batch_size``, ``test_data``,
        ``checkpoints``, ``cache``, ``start_epoch``, ...); not ``rng``, which the seeds give.

    Returns
    -------
    list of (nn.Module, TrainResult)
        One pair per seed, in the order of ``seeds``; the models are in eval mode.

    Notes
    -----
    With ``"vmap"`` each seed's cache key is :func:`train`'s plus the method and the group of seeds
    trained together (batched kernels may round differently for another group), so a group is
    loaded when every member is cached and trained again otherwise.
    """
    seeds = _check_seeds(seeds)
    for name in ("rng", "seed"):
        if name in train_kwargs:
            raise ValueError(f"train_kwargs must not contain {name}: pass the seeds as seeds")
    if not callable(make_model):
        raise ValueError(f"make_model must be a callable seed -> nn.Module, got {make_model!r}")
    if method not in ("auto", "vmap", "loop"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    x, y = _check_data(data)
    o = _options(**train_kwargs)
    models = [_make(make_model, s) for s in seeds]
    batch(models[0], x, y, o.loss_fn)
    if o.test_data is not None:
        batch(models[0], *o.test_data, o.loss_fn, name="test_data")
    if method == "auto":
        method = auto_method(models[0])
    if method == "loop":
        return [(m, train(m, (x, y), rng=s, **train_kwargs)) for m, s in zip(models, seeds)]

    _check_same_architecture(models)
    keys = [_train_key(m, x, y, o, {"seed": s}, method="vmap", group=tuple(seeds))
            for m, s in zip(models, seeds)]
    paths = [_cache_dir(o.cache_dir) / f"{k}.pt" for k in keys]
    if o.cache and all(p.is_file() for p in paths):
        return [(m, _load(m, p, k)) for m, p, k in zip(models, paths, keys)]
    results = _train_stacked(models, seeds, x, y, o, keys)
    if o.cache:
        for m, p, r in zip(models, paths, results):
            _save(p, {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}, r)
    return list(zip(models, results))


def _train_stacked(models, seeds, x, y, o: _Options, keys) -> list[TrainResult]:
    """Train ``models`` (same architecture) together: stacked parameters, vmapped forward."""
    from torch.func import functional_call, stack_module_state, vmap

    K, device = len(models), next(models[0].parameters()).device
    params, buffers = stack_module_state(models)  # {name: [K, ...]}; parameters are new leaves
    template = copy.deepcopy(models[0]).to("meta").train()
    names = list(models[0].state_dict())  # parameters and persistent buffers, state_dict order

    def seed_loss(p, b, xb, yb):
        return o.loss_fn(functional_call(template, (p, b), (xb,)), yb)

    batched_loss = vmap(seed_loss)
    optimiser = _optimiser(o, list(params.values()))
    generators = [_skip_epochs(torch.Generator().manual_seed(s), len(x), o.start_epoch) for s in seeds]
    results = [TrainResult(key=k) for k in keys]

    def stacked(name):
        return params[name] if name in params else buffers[name]

    def snapshot():
        return [{n: stacked(n)[k].detach().cpu().clone() for n in names} for k in range(K)]

    def write_back():
        with torch.no_grad():
            for k, m in enumerate(models):
                for n, t in list(m.named_parameters()) + list(m.named_buffers()):
                    t.copy_(stacked(n)[k])

    if o.start_epoch in o.checkpoints:
        for r, s in zip(results, snapshot()):
            r.checkpoints[o.start_epoch] = s
    n_batches = -(-len(x) // o.batch_size)
    bar = tqdm(total=(o.epochs - o.start_epoch) * n_batches, desc=f"training {K} seeds", disable=not o.progress,
               leave=False)
    for epoch in range(o.start_epoch + 1, o.epochs + 1):
        orders = torch.stack([torch.randperm(len(x), generator=g) for g in generators])  # [K, N]
        running = torch.zeros(K, dtype=torch.float64)
        for idx in orders.split(o.batch_size, dim=1):  # [K, b]: seed k's b indices
            flat = idx.reshape(-1)  # one gather for all seeds: [K * b] rows, then [K, b, ...]
            xb = x.index_select(0, flat).view(*idx.shape, *x.shape[1:]).to(device)
            yb = y.index_select(0, flat).view(*idx.shape, *y.shape[1:]).to(device)
            losses = batched_loss(params, buffers, xb, yb)  # [K], seed k's mean loss
            optimiser.zero_grad(set_to_none=True)
            losses.sum().backward()  # seed k's parameters only get seed k's gradient
            optimiser.step()
            running += losses.detach().cpu().double() * idx.shape[1]
            bar.update()
        if o.test_data is not None or epoch in o.checkpoints:
            write_back()
        shots = snapshot() if epoch in o.checkpoints else None
        for k, (m, r) in enumerate(zip(models, results)):
            record = {"epoch": epoch, "loss": running[k].item() / len(x)}
            if o.test_data is not None:
                record["test_loss"], record["test_accuracy"] = evaluate(m, *o.test_data, loss_fn=o.loss_fn)
            r.history.append(record)
            if shots is not None:
                r.checkpoints[epoch] = shots[k]
        bar.set_postfix(loss=f"{running.mean().item() / len(x):.4f}")
    bar.close()
    write_back()
    for m in models:
        m.eval()
    return results


def _check_same_architecture(models) -> None:
    def signature(m):
        return (repr(m), [(n, tuple(t.shape), t.dtype, t.device) for n, t in m.state_dict().items()])

    first = signature(models[0])
    for m in models[1:]:
        if signature(m) != first:
            raise ValueError("make_model must build the same architecture (modules, shapes, dtype, device) "
                             "for every seed")


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a sequence of distinct ints >= 0, got {seeds!r}")
    seeds = [integer(s, f"seeds[{i}]", minimum=0) for i, s in enumerate(seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints >= 0, got {seeds!r}")
    return seeds


def _make(make_model, seed: int) -> nn.Module:
    model = make_model(seed)
    if not isinstance(model, nn.Module):
        raise ValueError(f"make_model must return an nn.Module, got {type(model).__name__} for seed {seed}")
    return model
