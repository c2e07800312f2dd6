"""The procedural scene renderer: determinism, label alignment, variety."""

import numpy as np

from artifix.example import scenes


def test_pure_function_of_seed_and_index():
    a = scenes.render(3, 0, 40)
    b = np.concatenate([scenes.render(3, s, 8).images for s in range(0, 40, 8)])
    assert np.array_equal(a.images, b)
    c = scenes.render(3, 17, 5)
    assert np.array_equal(c.images, a.images[17:22]) and np.array_equal(c.labels, a.labels[17:22])
    assert not np.array_equal(scenes.render(4, 0, 40).images, a.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (40, 64, 64, 3) and a.labels.shape == (40, 64, 64)


def test_label_maps_align_with_pixels():
    b = scenes.render(0, 0, 300)
    img = b.images.astype(np.float32)
    door, window = scenes.CLASS_INDEX["door"], scenes.CLASS_INDEX["window"]
    n_checked = 0
    for i in range(len(img)):
        m = b.labels[i] == door
        if m.sum() >= 12:
            # a door is one flat colour plus pixel noise (sd 3): a one-pixel misalignment would mix in wall colours
            assert img[i][m].std(0).max() < 6.0, i
            n_checked += 1
    assert n_checked > 50
    # label boundaries are colour edges: neighbours with different labels differ far more than same-label ones
    lab = b.labels
    dx_img = np.abs(np.diff(img, axis=2)).sum(-1)
    diff_lab = lab[:, :, 1:] != lab[:, :, :-1]
    flat = np.isin(lab[:, :, 1:], [door, window, scenes.CLASS_INDEX["roof"]]) & np.isin(lab[:, :, :-1], [door, window, scenes.CLASS_INDEX["roof"], scenes.CLASS_INDEX["building"]])
    assert dx_img[diff_lab & flat].mean() > 5 * dx_img[~diff_lab & flat].mean()


def test_variety():
    b = scenes.render(1, 0, 500)
    freq = np.bincount(b.labels.ravel(), minlength=len(scenes.CLASSES)) / b.labels.size
    assert all(freq > 0.002), dict(zip(scenes.CLASSES, freq.round(4)))
    assert 0.3 < freq[scenes.CLASS_INDEX["sky"]] < 0.65 and 0.2 < freq[scenes.CLASS_INDEX["ground"]] < 0.5
    has = lambda c: (b.labels == scenes.CLASS_INDEX[c]).reshape(500, -1).any(1)  # noqa: E731
    for c, lo, hi in (("building", 0.5, 0.95), ("tree", 0.6, 0.99), ("sun", 0.15, 0.6), ("cloud", 0.25, 0.9)):
        assert lo < has(c).mean() < hi, (c, has(c).mean())
    # no two images alike; sky colour spans day, dusk, night, overcast
    flat = b.images.reshape(500, -1).astype(np.int16)
    d = np.abs(flat[:250] - flat[250:]).mean(1)
    assert d.min() > 5
    top = b.images[:, 0, :, :].mean((1, 2))
    assert top.min() < 60 and top.max() > 140
    # horizons vary
    ground_rows = (b.labels == scenes.CLASS_INDEX["ground"]).any(2).argmax(1)
    assert np.ptp(ground_rows) > 15

