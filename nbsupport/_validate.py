"""Argument checks shared by the modules: one place, one wording.

Every check accepts what a reader naturally passes (a Python number, a NumPy scalar, a 0-d tensor
or array) and raises ``ValueError`` naming the argument and saying what was expected otherwise.

Randomness has one rule in the whole package (DESIGN.md): an ``rng`` argument that is an int seed
>= 0 or a generator, numpy's or torch's. :func:`numpy_rng` and :func:`torch_rng` turn it into the
generator a function needs; a generator of the other library gives one seed drawn from it (so it
advances). ``None`` is refused: no function draws fresh entropy or touches a global RNG silently,
so every result is reproducible.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np
import torch

__all__ = ["real", "integer", "pair", "rows", "labels", "batch", "module", "flag", "eval_mode", "real_tensor",
           "check_input", "check_target", "checked_forward", "training_schedule", "int_seed", "numpy_rng",
           "torch_rng"]


def _scalar(value):
    """``value`` as a Python number if it is a real scalar of any kind, else ``None``."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex():
            return None
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0:
            return None
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def real(value, name: str, *, low: float | None = None, low_inclusive: bool = False,
         high: float | None = None, high_inclusive: bool = True) -> float:
    """A finite real scalar within optional bounds, as a Python ``float``.

    Parameters
    ----------
    value : int, float, NumPy scalar, 0-d tensor or array
    name : str
        The argument's name, used in the error message.
    low, high : float, optional
        Bounds; ``low_inclusive`` / ``high_inclusive`` say whether they are allowed.

    Raises
    ------
    ValueError
        If ``value`` is not a finite real scalar within the bounds (booleans are refused).
    """
    number = _scalar(value)
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high}")
    expected = "a finite real number" + (f" {' and '.join(bounds)}" if bounds else "")
    ok = number is not None and math.isfinite(number)
    if ok and low is not None:
        ok = number >= low if low_inclusive else number > low
    if ok and high is not None:
        ok = number <= high if high_inclusive else number < high
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(number)


def integer(value, name: str, *, minimum: int | None = None) -> int:
    """An integer scalar (Python, NumPy or 0-d tensor), at least ``minimum``, as a Python ``int``.

    Raises
    ------
    ValueError
        If ``value`` is not an integer (floats such as ``2.0`` and booleans are refused) or is
        below ``minimum``.
    """
    number = _scalar(value)
    if not isinstance(number, int) or (minimum is not None and number < minimum):
        expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def flag(value, name: str) -> bool:
    """``True`` or ``False`` (Python or NumPy booleans) as a Python ``bool``; ``0``, ``1``,
    strings and the rest are a ValueError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def pair(value, name: str, *, minimum: int | None = None) -> tuple[int, int]:
    """An integer or a pair of integers (e.g. a kernel size) as a pair of Python ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")
        return integer(value[0], name, minimum=minimum), integer(value[1], name, minimum=minimum)
    number = integer(value, name, minimum=minimum)
    return number, number


def rows(values, name: str = "values") -> torch.Tensor:
    """A finite floating tensor of shape (N, d), returned in float64 on its device."""
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or not values.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor of shape (N, d), got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape "
                         f"{tuple(getattr(values, 'shape', ()))}")
    values = values.to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return values


def labels(values, n: int, name: str = "inverse", device=None) -> torch.Tensor:
    """A 1-D integer tensor of ``n`` indices >= 0 (a group or class per row), returned as long.

    With ``device``, the tensor must be on that device (no silent copies between devices)."""
    if (not isinstance(values, torch.Tensor) or values.ndim != 1 or values.dtype.is_floating_point
            or values.dtype == torch.bool or values.is_complex()):
        raise ValueError(f"{name} must be a 1-D integer tensor of length {n}, got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape "
                         f"{tuple(getattr(values, 'shape', ()))}")
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} rows")
    if device is not None and values.device != torch.device(device):
        raise ValueError(f"{name} is on {values.device} but the rows on {device}")
    if bool((values < 0).any()):
        raise ValueError(f"{name} must hold indices >= 0")
    return values.long()


def module(value, name: str = "model") -> torch.nn.Module:
    """An ``nn.Module``, returned as it is; anything else is a ValueError naming ``name``."""
    if not isinstance(value, torch.nn.Module):
        raise ValueError(f"{name} must be an nn.Module, got {type(value).__name__}")
    return value


def eval_mode(model, name: str = "model") -> torch.nn.Module:
    """An ``nn.Module`` none of whose BatchNorm or dropout layers (``p > 0``) is in training mode.

    In training mode BatchNorm normalises by the batch's statistics (one image's map would depend
    on the others in the batch) and updates its running statistics as a side effect, and dropout
    makes the result random. Maps of a trained network (pullbacks, guided backpropagation) are
    meant in evaluation mode, so they refuse rather than warn: a warning would come after the
    running statistics had changed. Functional dropout and batch-norm calls have no module to
    inspect; ``nbsupport.intercept.route_calls(..., eval_only=True)`` catches them in the pass.

    Raises
    ------
    ValueError
        If ``model`` is not an ``nn.Module``, or naming the first such layer and the fix,
        ``model.eval()``.
    """
    module(model, name)
    dependent = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    for layer_name, layer in model.named_modules():
        if not (layer.training and isinstance(layer, dependent)):
            continue
        if isinstance(layer, torch.nn.modules.dropout._DropoutNd) and layer.p == 0:
            continue  # drops nothing
        raise ValueError(f"{name} is in training mode (its {type(layer).__name__} layer "
                         f"{layer_name or name!r} would use batch statistics, update its running "
                         f"statistics or drop units): call {name}.eval() first")
    return model


def real_tensor(values, name: str) -> torch.Tensor:
    """A real array-like (list, numpy array, tensor) as a float64 CPU tensor, detached; a string,
    ``None``, a ragged list or a complex or boolean array is a ValueError naming ``name``."""
    ok = not isinstance(values, (str, bytes)) and values is not None
    if isinstance(values, torch.Tensor):
        ok = ok and not (values.is_complex() or values.dtype == torch.bool)
    elif isinstance(values, np.ndarray):
        ok = ok and values.dtype.kind in "iuf"
    if ok:
        try:
            return torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ValueError(f"{name} must be a real array-like (numbers, numpy array or tensor), got {values!r:.60}")


def batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, name: str = "data") -> None:
    """Refuse, naming the argument, what torch would report deep inside a forward pass or a loss.

    ``x`` must be floating and in the dtype of the model's floating parameters (a float32 batch
    and a float64 network otherwise fail with "mat1 and mat2 must have the same dtype"). With the
    default loss (cross-entropy on class indices) ``y`` must hold integer class indices in
    ``[0, classes)``, ``classes`` read from the model's output on one sample (in eval mode, under
    ``no_grad``; the model's flags are restored): float labels would fail in torch's ``gather``,
    out-of-range ones with "Target 7 is out of bounds". Other losses get their targets unchecked
    (a binary cross-entropy takes float targets)."""
    where = f"{name}: " if name else ""
    if not (isinstance(model, torch.nn.Module) and any(True for _ in model.parameters())):
        raise ValueError(f"model must be an nn.Module with parameters, got {type(model).__name__}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{where}x must be a floating tensor, got {x.dtype}")
    dtypes = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    if dtypes and x.dtype not in dtypes:
        raise ValueError(f"{where}x is {x.dtype} but the model's parameters are {sorted(map(str, dtypes))}: "
                         f"convert one of them (x.to(...) or model.to(...))")
    if loss_fn is not torch.nn.functional.cross_entropy:
        return
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{where}y must be a 1-D integer tensor of class indices (the loss is cross-entropy), "
                         f"got {y.dtype} of shape {tuple(y.shape)}")
    was_training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x[:1].to(next(model.parameters()).device))
    finally:
        for m, flag in was_training:
            m.training = flag
    n_classes = out.shape[1] if out.ndim == 2 else None
    low, high = int(y.min()), int(y.max())
    if low < 0 or (n_classes is not None and high >= n_classes):
        raise ValueError(f"{where}y must hold class indices in [0, {n_classes}) (the model has {n_classes} "
                         f"outputs), got values in [{low}, {high}]")


def check_input(x, name: str = "x") -> torch.Tensor:
    """A floating tensor with a batch axis, ``(N, ...)`` with at least two axes; returned as it is.

    The input of the attribution call shape ``attribute(model, x, target)``.

    Raises
    ------
    ValueError
        Naming ``name``, for anything else (an integer tensor, a single sample, not a tensor).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of shape (N, ...) with a batch axis, got {shape}")
    return x


def check_target(target, n: int, n_classes: int, device=None, name: str = "target") -> torch.Tensor:
    """Class indices of the attribution call shape, checked and broadcast to one per sample.

    Parameters
    ----------
    target : int, NumPy integer, or integer Tensor / NumPy array of shape () or (N,)
        Class indices in ``[0, n_classes)``. Booleans and floats (``2.0`` included) are refused.
    n, n_classes : int
        Batch size and number of classes (outputs of the model).
    device : torch.device, optional
        Where the result lives.
    name : str
        The argument's name, used in the error message.

    Returns
    -------
    Tensor, long, shape (N,)

    Raises
    ------
    ValueError
        Naming ``name``: not an integer, a wrong shape, or a class outside ``[0, n_classes)``.
    """
    expected = f"{name} must be an int or an integer tensor or array of shape ({n},)"
    if isinstance(target, np.ndarray) and target.ndim > 0:
        if target.dtype.kind not in "iu":
            raise ValueError(f"{expected}, got an array of dtype {target.dtype}")
        target = torch.as_tensor(target.astype(np.int64))
    if isinstance(target, torch.Tensor) and target.ndim > 0:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"{expected}, got a tensor of dtype {target.dtype}")
        if target.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one class per sample), got {tuple(target.shape)}")
        target = target.to(device=device, dtype=torch.long)
    else:
        number = _scalar(target)  # None for booleans
        if not isinstance(number, int):
            raise ValueError(f"{expected}, got {target!r}")
        target = torch.full((n,), number, dtype=torch.long, device=device)
    if len(target) and not (0 <= int(target.min()) and int(target.max()) < n_classes):
        raise ValueError(f"{name} must lie in [0, {n_classes}) (the model has {n_classes} outputs), "
                         f"got values in [{int(target.min())}, {int(target.max())}]")
    return target


# torch's messages for an input whose shape does not fit a layer
_SHAPE_ERROR = re.compile(r"shape|size mismatch|must match the size|Expected .*input|channels|dimension",
                          re.IGNORECASE)


def checked_forward(model, x: torch.Tensor):
    """``model(x)``, with a shape mismatch between ``x`` and the model reported as a ``ValueError``.

    Only errors whose message is about shapes are translated; out-of-memory, device and dtype
    errors, and ``NotImplementedError`` (a call without a backward rule), pass through unchanged.
    """
    try:
        return model(x)
    except NotImplementedError:  # a call without a backward rule: not about x
        raise
    except RuntimeError as err:
        if not _SHAPE_ERROR.search(str(err)):  # out of memory, devices, dtypes: not about x's shape
            raise
        raise ValueError(f"x of shape {tuple(x.shape)} does not fit the model: {err}") from err


def training_schedule(n: int, length, length_name: str, lr, batch_size) -> tuple[int, int]:
    """The length of a training loop (``epochs`` or ``steps``, >= 1) and ``batch_size`` (in
    ``[1, n]``) as ints, ``lr`` checked > 0: the checks shared by the loops of ``nbsupport.gating``."""
    length = integer(length, length_name, minimum=1)
    batch_size = integer(batch_size, "batch_size", minimum=1)
    if batch_size > n:
        raise ValueError(f"batch_size must be an int in [1, {n}], got {batch_size!r}")
    real(lr, "lr", low=0)
    return length, batch_size


def int_seed(rng, name: str = "rng") -> int:
    """An int seed >= 0 from an int, or one drawn from a numpy or torch generator (advancing it)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    if isinstance(rng, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device))
    try:
        return integer(rng, name, minimum=0)
    except ValueError:
        raise ValueError(f"{name} must be an int seed >= 0, a numpy.random.Generator or a "
                         f"torch.Generator (no global or fresh randomness), got {rng!r}") from None


def numpy_rng(rng, name: str = "rng") -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``rng``: a numpy Generator is used as is (and advanced),
    an int seeds a fresh one, a torch Generator gives one seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int_seed(rng, name))


def torch_rng(rng, device=None, name: str = "rng", generator=None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) from ``rng``: a torch Generator on that
    device type is used as is (and advanced), an int seeds a fresh one, a numpy Generator gives one
    seed. ``generator``, when given, must be a ``torch.Generator`` and takes the place of ``rng``
    (DESIGN.md's older keyword, kept by the functions that name it)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
        rng, name = generator, "generator"
    device = torch.device("cpu" if device is None else device)
    if isinstance(rng, torch.Generator):
        if torch.device(rng.device).type != device.type:
            raise ValueError(f"{name} must be a generator on {device}, got one on {rng.device}")
        return rng
    return torch.Generator(device=device).manual_seed(int_seed(rng, name))
