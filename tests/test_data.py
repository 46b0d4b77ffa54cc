"""nbsupport.data: every source of Fashion-MNIST, checked with temporary caches, and the moons."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import FashionMNIST

from nbsupport import data

REAL = data.DEBIAN_FASHION_MNIST
HAVE_REAL = all((REAL / name).is_file() for name, _ in FashionMNIST.resources)
K = 7  # rows in the fake package


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format of (Fashion-)MNIST: magic (0, 0, dtype 0x08, ndim), big-endian sizes, uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _rows() -> dict[str, np.ndarray]:
    """K rows per file: real ones from the Debian package when installed, else random ones."""
    if HAVE_REAL:
        out = {}
        for name, _ in FashionMNIST.resources:
            with gzip.open(REAL / name) as f:
                raw = f.read()
            if "images" in name:
                out[name] = np.frombuffer(raw, np.uint8, offset=16)[: K * 784].reshape(K, 28, 28)
            else:
                out[name] = np.frombuffer(raw, np.uint8, offset=8)[:K]
        return out
    rng = np.random.default_rng(0)
    return {name: (rng.integers(0, 256, (K, 28, 28)) if "images" in name else rng.integers(0, 10, K))
            for name, _ in FashionMNIST.resources}


@pytest.fixture(scope="module")
def fake_rows():
    return _rows()


@pytest.fixture
def fake_package(tmp_path, fake_rows):
    """A directory laid out like Debian's package, holding K rows per file, and its md5 sums."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    md5 = {}
    for name, rows in fake_rows.items():
        blob = gzip.compress(_idx_bytes(rows), mtime=0)
        (pkg / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return pkg, md5


@pytest.fixture
def no_download(monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")
    monkeypatch.setattr(FashionMNIST, "download", offline)


def _patch_md5(monkeypatch, md5):
    monkeypatch.setattr(FashionMNIST, "resources", [(name, md5[name]) for name, _ in FashionMNIST.resources])


def test_recompressed_package_is_accepted_by_content(tmp_path, fake_package, fake_rows, monkeypatch, no_download):
    """Debian's case: the .gz files differ from upstream, their content does not."""
    pkg, _ = fake_package  # the .gz md5 sums do not match torchvision's
    raw_md5 = {Path(name).stem: hashlib.md5(_idx_bytes(rows)).hexdigest() for name, rows in fake_rows.items()}
    monkeypatch.setattr(data, "RAW_MD5", raw_md5)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", pkg)
    ds = data.load_fashion_mnist(train=False, root=tmp_path / "cache")
    np.testing.assert_array_equal(ds.targets.numpy(), fake_rows["t10k-labels-idx1-ubyte.gz"])


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NBSUPPORT_DATA", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    monkeypatch.delenv("NBSUPPORT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_root() == tmp_path / "home" / ".cache" / "nbsupport"


def test_fake_package_is_copied_checked_and_loaded(tmp_path, fake_package, fake_rows, monkeypatch, no_download):
    pkg, md5 = fake_package
    _patch_md5(monkeypatch, md5)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", pkg)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = data.load_fashion_mnist(train=train, root=tmp_path / "cache")
        assert len(ds) == K
        np.testing.assert_array_equal(ds.data.numpy(), fake_rows[f"{prefix}-images-idx3-ubyte.gz"])
        np.testing.assert_array_equal(ds.targets.numpy(), fake_rows[f"{prefix}-labels-idx1-ubyte.gz"])
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_existing_cache_is_used_without_the_package(tmp_path, fake_package, monkeypatch, no_download):
    pkg, md5 = fake_package
    _patch_md5(monkeypatch, md5)
    data.prepare_fashion_mnist(tmp_path / "cache", system_dir=pkg)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")  # package gone, cache stays
    assert len(data.load_fashion_mnist(root=tmp_path / "cache")) == K


def test_env_variable_selects_the_cache(tmp_path, fake_package, monkeypatch, no_download):
    pkg, md5 = fake_package
    _patch_md5(monkeypatch, md5)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", pkg)
    monkeypatch.setenv("NBSUPPORT_DATA", str(tmp_path / "envcache"))
    data.load_fashion_mnist(train=False)
    assert (tmp_path / "envcache" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_damaged_package_fails_the_md5_check(tmp_path, fake_package, monkeypatch, no_download):
    pkg, _ = fake_package  # neither torchvision's md5 sums nor the upstream content sums match
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", pkg)
    with pytest.raises(ValueError, match="md5"):
        data.load_fashion_mnist(root=tmp_path / "cache")


def test_download_is_the_last_resort(tmp_path, fake_package, fake_rows, monkeypatch):
    pkg, md5 = fake_package
    calls = []

    def fake_download(self):  # stands in for torchvision's download: writes the raw files
        calls.append(self.root)
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        for name, rows in fake_rows.items():
            (raw / Path(name).stem).write_bytes(_idx_bytes(rows))

    monkeypatch.setattr(FashionMNIST, "download", fake_download)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    assert len(data.load_fashion_mnist(root=tmp_path / "cache")) == K
    assert calls == [str(tmp_path / "cache")]


def test_offline_without_package_says_how_to_get_it(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(root=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.prepare_fashion_mnist(tmp_path / "cache", download=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="train must be a bool"):
        data.load_fashion_mnist(train="yes", root=tmp_path)
    # a keyword torchvision does not take is a ValueError naming it (torchvision's own is a TypeError)
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist(split="test", root=tmp_path)


@pytest.mark.skipif(not HAVE_REAL, reason="Debian package dataset-fashion-mnist not installed")
def test_real_package(tmp_path):
    train = data.load_fashion_mnist(train=True, root=tmp_path)
    test = data.load_fashion_mnist(train=False, root=tmp_path)
    assert (len(train), len(test)) == (60_000, 10_000)
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    x, y = data.fashion_mnist_tensors(train=False, n=100, root=tmp_path, flatten=False)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (100,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x[:, 0].numpy() * 255, test.data[:100].numpy(), atol=1e-4)
    for n in (0, 10_001, 2.5):
        with pytest.raises(ValueError, match="n must be"):
            data.fashion_mnist_tensors(train=False, n=n, root=tmp_path)
    assert len(data.fashion_mnist_tensors(train=False, n=np.int64(3), root=tmp_path)[0]) == 3


def test_moons_lie_on_two_half_circles():
    x, y = data.make_moons(400, noise=0.0, seed=0)
    assert x.shape == (400, 2) and x.dtype == torch.float64 and y.dtype == torch.long
    assert torch.bincount(y).tolist() == [200, 200]
    # noise-free: class 0 on the upper unit half circle around (0, 0), class 1 on the lower one around (1, 0.5)
    c0, c1 = x[y == 0], x[y == 1] - torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(c0.norm(dim=1), torch.ones(200, dtype=torch.float64))
    torch.testing.assert_close(c1.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert bool((c0[:, 1] >= -1e-12).all()) and bool((c1[:, 1] <= 1e-12).all())


def test_moons_noise_and_seed():
    a, _ = data.make_moons(2000, noise=0.2, seed=1)
    assert torch.equal(a, data.make_moons(np.int64(2000), noise=np.float64(0.2), seed=np.int64(1))[0])
    b, _ = data.make_moons(2000, noise=0.2, seed=1)
    c, _ = data.make_moons(2000, noise=0.2, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean, _ = data.make_moons(2000, noise=0.0, seed=1)
    residual = (a - clean).std().item()  # the same seed shuffles identically; noise has sd 0.2 per coordinate
    assert abs(residual - 0.2) < 0.02


@pytest.mark.parametrize("kwargs, word", [(dict(n=1, noise=0.1, seed=0), "n must"),
                                          (dict(n=10, noise=-1.0, seed=0), "noise must"),
                                          (dict(n=10, noise=float("nan"), seed=0), "noise must"),
                                          (dict(n=10, noise="a", seed=0), "noise must"),
                                          (dict(n=10, noise=0.1, seed=-1), "seed must"),
                                          (dict(n=10, noise=0.1, seed=2**32), "seed must"),
                                          (dict(n=10.0, noise=0.1, seed=0), "n must"),
                                          (dict(n=True, noise=0.1, seed=0), "n must")])
def test_moons_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.make_moons(**kwargs)


def test_moons_seed_follows_the_rng_rule():
    """An int is scikit-learn's random_state; a generator gives one seed and advances; None (fresh
    entropy in scikit-learn) is refused, so every call is reproducible."""
    import torch as _torch
    from sklearn.datasets import make_moons as reference
    x, y = data.make_moons(50, 0.1, seed=7)
    rx, ry = reference(n_samples=50, noise=0.1, random_state=7)  # the independent reference
    np.testing.assert_array_equal(x.numpy(), rx)
    np.testing.assert_array_equal(y.numpy(), ry)
    for make in (lambda: np.random.default_rng(5), lambda: _torch.Generator().manual_seed(5)):
        g1, g2 = make(), make()
        first = data.make_moons(50, 0.1, seed=g1)[0]
        assert _torch.equal(first, data.make_moons(50, 0.1, seed=g2)[0])     # same generator state, same points
        assert not _torch.equal(first, data.make_moons(50, 0.1, seed=g1)[0])  # advanced
    for bad in (None, 1.5, "0", True):
        with pytest.raises(ValueError, match="seed"):
            data.make_moons(50, 0.1, seed=bad)
