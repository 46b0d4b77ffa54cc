r"""Every ReLU and 2-d max-pool call of a model's forward pass, routed to rules of one's own.

:func:`route_calls` installs a :class:`torch.overrides.TorchFunctionMode` that is active only
while the model's forward pass runs (entered and left by forward hooks on every submodule). It
intercepts the *functions* ``torch.relu``, ``torch.relu_``, ``F.relu`` (in place or not),
``Tensor.relu``, ``Tensor.relu_``, ``F.max_pool2d`` (also with ``return_indices``) and
``torch.max_pool2d``, so it covers ``nn.ReLU``/``nn.MaxPool2d`` modules (which call those
functions) and ReLUs called inside a ``forward`` alike (torchvision's DenseNet calls ``F.relu``),
without touching the model: restoring it means removing the hooks. Related functions for which no
rule exists (``relu6``, ``threshold``, other max-poolings) raise :class:`NotImplementedError`
naming the call rather than passing silently. ReLUs written as ``clamp(min=0)``,
``torch.maximum`` or ``torch.where`` cannot be recognised.

The excitation rules (:mod:`nbsupport.pullbacks.surrogate`), guided backpropagation
(:func:`nbsupport.attribution.guided_backprop`) and the gate reader
(:func:`nbsupport.patterns.relu_inputs`) are rules routed this way.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.overrides import TorchFunctionMode

from ._validate import eval_mode, pair

__all__ = ["route_calls", "PoolGeometry", "pool_geometry"]

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_MAXPOOL_INDICES = {F.max_pool2d_with_indices}
_UNSUPPORTED = {F.relu6, F.threshold, torch.threshold, torch.threshold_, F.threshold_, F.max_pool1d, F.max_pool3d,
                F.max_pool1d_with_indices, F.max_pool3d_with_indices, torch.max_pool1d, torch.max_pool3d,
                F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.fractional_max_pool2d,
                F.fractional_max_pool3d, F.lp_pool2d, F.hardtanh, F.hardtanh_}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
# calls whose result depends on the training flag: dropout (random) and batch norm (batch
# statistics, running statistics updated); argument names and the flag's default
_DROPOUT = {F.dropout: True, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True,
            F.alpha_dropout: False, F.feature_alpha_dropout: False}
_DROPOUT_ARGS = ("input", "p", "training", "inplace")
_ATEN_DROPOUT = {torch.dropout, torch.dropout_, torch.alpha_dropout, torch.alpha_dropout_,
                 torch.feature_dropout, torch.feature_dropout_, torch.feature_alpha_dropout,
                 torch.feature_alpha_dropout_}
_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training")


class PoolGeometry(NamedTuple):
    """The windows of a 2-d pooling: each field a pair ``(height, width)`` of ints."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def pool_geometry(kernel_size, stride=None, padding=0, dilation=1) -> PoolGeometry:
    """``F.max_pool2d``'s window arguments as pairs of ints, checked.

    Parameters
    ----------
    kernel_size, stride, padding, dilation : int or pair of ints
        As in ``torch.nn.functional.max_pool2d``; ``stride`` ``None`` (or an empty sequence, as
        ``torch.max_pool2d`` passes it) means ``kernel_size``.

    Returns
    -------
    PoolGeometry

    Raises
    ------
    ValueError
        Unless ``kernel_size, stride, dilation >= 1`` and ``0 <= padding <= kernel_size // 2``
        (PyTorch's own conditions).
    """
    kernel = pair(kernel_size, "kernel_size", minimum=1)
    empty = stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
    stride = kernel if empty else pair(stride, "stride", minimum=1)
    padding, dilation = pair(padding, "padding", minimum=0), pair(dilation, "dilation", minimum=1)
    if not all(p <= k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"padding must be at most kernel_size // 2, got padding={padding}, kernel_size={kernel}")
    return PoolGeometry(kernel, stride, padding, dilation)


_CHECKPOINT_FILE = torch.utils.checkpoint.__file__


def _inside_checkpoint() -> bool:
    """Whether the current call runs inside ``torch.utils.checkpoint`` (forward or recomputation).

    Activation checkpointing recomputes the forward pass during the backward pass, when the
    routing is no longer active for calls made outside a submodule's forward: a functional ReLU
    there would be recomputed vanilla and its output read by the routed rule as the
    pre-activation (non-reentrant checkpointing swaps saved tensors in order). Refusing is the
    safe answer; detection walks the Python stack for checkpoint's frames.

    What that finds: ``torch.utils.checkpoint.checkpoint`` (reentrant or not, with or without a
    selective-checkpointing ``context_fn``), ``checkpoint_sequential`` and any wrapper that calls
    them, eager or inside ``torch.compile`` (tested with the ``aot_eager`` backend). What it cannot
    find: a recomputation written without ``torch.utils.checkpoint`` (a custom
    ``torch.autograd.Function`` or saved-tensor hooks that re-run a function in the backward pass);
    its functional ReLU calls outside any submodule's forward would be recomputed vanilla.
    ``torch.compile``'s own rematerialisation (the min-cut partitioner, ``activation_memory_budget``)
    needs no detection: it recomputes the traced graph, which holds the rules.
    """
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == _CHECKPOINT_FILE:
            return True
        frame = frame.f_back
    return False


def _bind(args, kwargs, names):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _training_call(func, args, kwargs) -> str | None:
    """The name of a dropout or batch-norm call that runs in training mode, else ``None``.

    Dropout counts when its flag is on and ``p > 0`` (the map would be random); batch norm when
    its ``training`` flag is on (batch statistics, and the running statistics are updated).
    """
    if func in _DROPOUT:
        bound = _bind(args, kwargs, _DROPOUT_ARGS)
        on, p = bound.get("training", _DROPOUT[func]), bound.get("p", 0.5)
    elif func in _ATEN_DROPOUT:
        bound = _bind(args, kwargs, ("input", "p", "train"))
        on, p = bound.get("train", True), bound.get("p", 0.5)
    elif func is F.batch_norm:
        on, p = _bind(args, kwargs, _BATCH_NORM_ARGS).get("training", False), 1.0
    else:
        return None
    return getattr(func, "__name__", repr(func)) if on and p > 0 else None


def relu_forward_saving(ctx, z: torch.Tensor, saved: torch.Tensor, inplace: bool) -> torch.Tensor:
    """The forward pass of a ReLU rule written as an ``autograd.Function``: keep ``saved`` (what
    the rule's backward pass needs, taken before an in-place ReLU overwrites ``z``) and return
    ``relu(z)``, in place (``z`` marked dirty) when ``inplace``."""
    ctx.save_for_backward(saved)
    if inplace:
        ctx.mark_dirty(z)
        return z.relu_()
    return torch.relu(z)


class _CallRouter(TorchFunctionMode):
    """Route ReLU and max-pool calls to ``relu_rule(z, inplace)`` and ``pool_rule(x, geometry, ceil_mode)``."""

    def __init__(self, relu_rule: Callable, pool_rule: Callable | None, strict: bool, eval_only: bool = False):
        super().__init__()
        self.relu_rule, self.pool_rule, self.strict = relu_rule, pool_rule, strict
        self.eval_only = eval_only

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        routed = func in _RELU or func in _RELU_INPLACE or (
            self.pool_rule is not None and (func in _MAXPOOL or func in _MAXPOOL_INDICES))
        if routed and _inside_checkpoint():
            raise ValueError("model uses activation checkpointing (torch.utils.checkpoint): its backward "
                             "pass recomputes the forward pass outside these rules, so ReLU and max-pool "
                             "calls would be recomputed vanilla; run the model without checkpointing")
        if self.eval_only:
            name = _training_call(func, args, kwargs)
            if name is not None:
                raise ValueError(f"model runs in training mode (a {name} call with its training flag on: "
                                 "dropout makes the map random, batch norm uses the batch's statistics and "
                                 "updates its running statistics): call model.eval() first (a BatchNorm "
                                 "with track_running_stats=False uses batch statistics even then)")
        if func in _RELU:
            bound = _bind(args, kwargs, ("input", "inplace"))
            return self.relu_rule(bound["input"], bool(bound.get("inplace", False)))
        if func in _RELU_INPLACE:
            return self.relu_rule(args[0], True)
        if self.pool_rule is not None and (func in _MAXPOOL or func in _MAXPOOL_INDICES):
            b = _bind(args, kwargs, _POOL_ARGS)
            geometry = pool_geometry(b["kernel_size"], b.get("stride"), b.get("padding", 0), b.get("dilation", 1))
            x, ceil_mode = b["input"], bool(b.get("ceil_mode", False))
            out = self.pool_rule(x, geometry, ceil_mode)
            if func in _MAXPOOL_INDICES or b.get("return_indices", False):
                with torch.no_grad():
                    _, indices = F.max_pool2d_with_indices(x, *geometry, ceil_mode=ceil_mode)
                return out, indices
            return out
        if self.strict and func in _UNSUPPORTED:
            name = getattr(func, "__name__", repr(func))
            raise NotImplementedError(f"the model calls {func.__module__ or 'torch'}.{name}, for which these rules "
                                      f"have none; its gradient would silently stay the vanilla one")
        return func(*args, **kwargs)


_ACTIVE: set[int] = set()


@contextlib.contextmanager
def route_calls(model: nn.Module, relu_rule: Callable, pool_rule: Callable | None = None,
                strict: bool = True, exclusive: bool = True, eval_only: bool = False) -> Iterator[nn.Module]:
    """Context manager: inside it, ``model``'s ReLU (and max-pool) calls go to the given rules.

    Only calls made while ``model`` (or one of its submodules) runs its forward pass are routed;
    the model is not modified (forward hooks are added, and removed on exit, also after an
    exception). Two rule-changing routings cannot nest on the same model (a rule would wrap the
    other's); a read-only one (``exclusive=False``, as the gate reader) can run inside another.

    Parameters
    ----------
    model : nn.Module
    relu_rule : callable
        ``relu_rule(z, inplace) -> Tensor`` replaces every ReLU call on the tensor ``z`` (``inplace``
        says whether the caller asked for an in-place ReLU; the rule must then modify ``z``).
    pool_rule : callable, optional
        ``pool_rule(x, geometry, ceil_mode) -> Tensor`` replaces every 2-d max-pool call, with
        ``geometry`` a :class:`~nbsupport.intercept.PoolGeometry`; the indices, when asked for, are
        max-pooling's. ``None`` leaves max-pooling alone.
    strict : bool
        Raise ``NotImplementedError`` at a call of a ReLU or max-pool relative without a rule
        (``relu6``, ``threshold``, ``hardtanh``, other max-poolings); ``False`` lets them run.
    exclusive : bool
        ``False`` for rules that only read ``z`` and then call ``torch.relu`` (which an enclosing
        routing then handles): allowed inside another routing of the same model.
    eval_only : bool
        Refuse (``ValueError`` naming the fix, ``model.eval()``) a BatchNorm or dropout module
        in training mode on entry (``nbsupport._validate.eval_mode``), and a dropout call with
        its training flag on and ``p > 0``, or a batch-norm call with its training flag on, made
        during the forward pass: checked before the call runs, so no running statistic is
        updated. Functional calls are caught as well as modules.

    Activation checkpointing (``torch.utils.checkpoint``, selective checkpointing included, eager or
    compiled) around a routed call is refused with a ``ValueError`` naming ``model``: its
    recomputation in the backward pass would bypass the rules. It is recognised by
    ``torch.utils.checkpoint``'s frames on the stack, so a recomputation scheme of one's own (a
    custom ``autograd.Function`` re-running the forward in its backward) is not recognised, and
    its functional ReLUs outside a submodule's forward would be recomputed vanilla. A compiled model
    (``torch.compile``) is routed as the eager one: the rules are traced into its graph, and what
    the compiler chooses to recompute in the backward pass is that graph.

    Yields
    ------
    nn.Module
        ``model``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if exclusive and id(model) in _ACTIVE:
        raise RuntimeError("rules are already routed on this model (e.g. inside surrogate_gradients); "
                           "nesting two rule-changing routings is not supported")
    if eval_only:
        eval_mode(model)
    mode = _CallRouter(relu_rule, pool_rule, bool(strict), bool(eval_only))
    depth = [0]

    def enter(module, args):
        if depth[0] == 0:
            mode.__enter__()
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            mode.__exit__(None, None, None)

    handles = []
    if exclusive:
        _ACTIVE.add(id(model))
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        if exclusive:
            _ACTIVE.discard(id(model))
