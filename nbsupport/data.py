"""Datasets used by the book, loaded offline.

Fashion-MNIST :cite:p:`xiao2017fashion` is read from a local cache in torchvision's layout. An
empty cache is filled, in this order, from the Debian package ``dataset-fashion-mnist`` (files
copied and checked against md5 sums of the upstream files) or, when the machine is online, by
torchvision's own download. The two moons come from scikit-learn.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import check_integrity, extract_archive
from ._validate import int_seed, integer, real

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "RAW_MD5",
    "data_root",
    "prepare_fashion_mnist",
    "load_fashion_mnist",
    "fashion_mnist_tensors",
    "make_moons",
    "FASHION_MNIST_CLASSES",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the four ``*.gz`` files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Class names of Fashion-MNIST, indexed by label.
FASHION_MNIST_CLASSES = tuple(FashionMNIST.classes)

_HOW_TO_GET_IT = (
    "Fashion-MNIST is not in the cache {root} and could not be obtained. Offline, install the "
    "Debian package that ships it:\n    sudo apt-get install dataset-fashion-mnist\n"
    "(it puts the four *.gz files in /usr/share/datasets/fashion-mnist), or copy those four files "
    "into {raw} yourself. Online, torchvision downloads them on the next call."
)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``root`` if given, else ``$NBSUPPORT_DATA``, else ``~/.cache/nbsupport``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("NBSUPPORT_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nbsupport"


def _raw_folder(root: Path) -> Path:
    return root / FashionMNIST.__name__ / "raw"


def _cache_complete(root: Path) -> bool:
    raw = _raw_folder(root)
    return all((raw / Path(name).stem).is_file() for name, _ in FashionMNIST.resources)


#: md5 sums of the *decompressed* upstream files. Debian recompressed the ``.gz`` files, so their
#: md5 differs from the one torchvision checks, but their content is byte-identical to upstream.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _copy_from_system(root: Path, system_dir: Path) -> bool:
    """Copy the Debian package's files into ``root``'s raw folder; False if they are absent.

    A file is accepted if the ``.gz`` passes torchvision's md5 check or, failing that (Debian
    recompressed them), if its decompressed content has the upstream md5 (:data:`RAW_MD5`).

    Raises
    ------
    ValueError
        If the files are present but fail both checks.
    """
    sources = [system_dir / name for name, _ in FashionMNIST.resources]
    if not all(src.is_file() for src in sources):
        return False
    raw = _raw_folder(root)
    raw.mkdir(parents=True, exist_ok=True)
    for src, (name, md5) in zip(sources, FashionMNIST.resources):
        target = raw / Path(name).stem
        shutil.copyfile(src, raw / name)
        extract_archive(str(raw / name), str(raw))
        if not (check_integrity(str(raw / name), md5) or check_integrity(str(target), RAW_MD5[target.name])):
            target.unlink()
            raise ValueError(f"{src} fails the md5 checks (torchvision's {md5} for the .gz file, "
                             f"{RAW_MD5[target.name]} for its content); the file is damaged")
    return True


def prepare_fashion_mnist(
    root: str | os.PathLike | None = None,
    system_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Make sure Fashion-MNIST is in the cache, and return the cache directory.

    Parameters
    ----------
    root : path, optional
        Cache directory (see :func:`data_root`).
    system_dir : path, optional
        Where to look for the Debian package's files; default :data:`DEBIAN_FASHION_MNIST`.
    download : bool
        Whether torchvision may download the files when neither source has them.

    Raises
    ------
    FileNotFoundError
        With instructions, when no source has the data.
    """
    root = data_root(root)
    system_dir = Path(system_dir) if system_dir is not None else DEBIAN_FASHION_MNIST
    if _cache_complete(root) or _copy_from_system(root, system_dir):
        return root
    if download:
        try:
            FashionMNIST(str(root), download=True)
            return root
        except (OSError, RuntimeError):  # offline: every mirror failed
            pass
    raise FileNotFoundError(_HOW_TO_GET_IT.format(root=root, raw=_raw_folder(root)))


def load_fashion_mnist(train: bool = True, root: str | os.PathLike | None = None, **kwargs) -> FashionMNIST:
    """The Fashion-MNIST training (60 000 images) or test (10 000 images) set.

    Parameters
    ----------
    train : bool
        Training set if True, test set otherwise.
    root : path, optional
        Cache directory (see :func:`data_root`); filled by :func:`prepare_fashion_mnist` if empty.
    **kwargs
        Passed to :class:`torchvision.datasets.FashionMNIST` (``transform``, ``target_transform``).

    Returns
    -------
    torchvision.datasets.FashionMNIST
        Items are ``(PIL image 28x28, label)`` unless a transform is given.
    """
    if not isinstance(train, (bool, np.bool_)):
        raise ValueError(f"train must be a bool, got {train!r}")
    train = bool(train)
    unknown = sorted(set(kwargs) - {"transform", "target_transform"})
    if unknown:  # torchvision would raise a TypeError; every other argument error is a ValueError
        raise ValueError(f"load_fashion_mnist takes transform and target_transform besides train and root, "
                         f"got {', '.join(unknown)}")
    root = prepare_fashion_mnist(root)
    return FashionMNIST(str(root), train=train, download=False, **kwargs)


def fashion_mnist_tensors(
    train: bool = True,
    n: int | None = None,
    root: str | os.PathLike | None = None,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as tensors, pixels scaled to [0, 1].

    Parameters
    ----------
    train : bool
        Training or test split.
    n : int, optional
        Keep the first ``n`` images (the files' order, which is fixed).
    flatten : bool
        Return images as rows of 784 pixels instead of ``(1, 28, 28)`` arrays.
    dtype : torch.dtype
        Floating dtype of the images.

    Returns
    -------
    x : Tensor, shape (N, 784) or (N, 1, 28, 28)
    y : Tensor, shape (N,), long
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    ds = load_fashion_mnist(train=train, root=root)
    total = len(ds.targets)
    if n is not None and integer(n, "n", minimum=1) > total:
        raise ValueError(f"n must be an integer in [1, {total}], got {n!r}")
    n = None if n is None else int(n)
    x = ds.data[:n].to(dtype) / 255.0
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    return x, ds.targets[:n].clone()


def make_moons(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles (scikit-learn's ``make_moons``), as tensors.

    Parameters
    ----------
    n : int
        Number of points (split evenly between the two classes).
    noise : float
        Standard deviation of the Gaussian noise added to each coordinate, >= 0.
    seed : int, numpy.random.Generator or torch.Generator
        An int in [0, 2**32) is scikit-learn's ``random_state`` (the same seed gives the same
        points); a generator gives one such seed (and advances). ``None`` is refused.

    Returns
    -------
    x : Tensor, shape (n, 2), float64
    y : Tensor, shape (n,), long, labels in {0, 1}
    """
    try:
        from sklearn.datasets import make_moons as _sk_make_moons
    except ImportError as err:  # an extra (pyproject.toml): say which
        raise ImportError("make_moons needs scikit-learn: pip install 'nbsupport[moons]'") from err

    n = integer(n, "n", minimum=2)
    noise = real(noise, "noise", low=0.0, low_inclusive=True)
    if isinstance(seed, (np.random.Generator, torch.Generator)):
        seed = int_seed(seed, "seed") % 2**32
    seed = integer(seed, "seed", minimum=0)
    if seed >= 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    x, y = _sk_make_moons(n_samples=n, noise=noise, random_state=seed)
    return torch.from_numpy(x).to(torch.float64), torch.from_numpy(y).long()


if __name__ == "__main__":  # ``python -m nbsupport.data``: fill the cache (used by ``make data``)
    import sys

    if sys.argv[1:] == ["--system-dir"]:  # where Debian's package puts the files (``make data`` asks)
        print(DEBIAN_FASHION_MNIST)
    else:
        print(f"Fashion-MNIST ready in {prepare_fashion_mnist()}")
