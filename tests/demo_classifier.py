"""The demo-quality classifier, shared by the quality tests: an SVM on shift-invariant
shape features of the demo dataset, fitted on 75 % and scored on the held-out 25 %."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from diffviews.demo.datasets import load_dataset


def features(images: np.ndarray) -> np.ndarray:
    """Per-pixel max over channels in [0, 1] (shape, not colour), shifted so the centre of
    mass sits in the middle (position does not matter either)."""
    f = images.astype(np.float32).max(axis=-1) / 255.0
    centre = (np.array(f.shape[1:]) - 1) / 2
    out = [ndimage.shift(im, centre - np.array(ndimage.center_of_mass(im + 1e-6)), order=1) for im in f]
    return np.stack(out).reshape(len(f), -1)


def fit_classifier(name: str):
    """(dataset, fitted SVC, held-out accuracy) for demo model ``name``."""
    ds = load_dataset(name)
    x_tr, x_te, y_tr, y_te = train_test_split(features(ds.images), ds.labels, test_size=0.25,
                                              random_state=0, stratify=ds.labels)
    clf = SVC(C=10.0).fit(x_tr, y_tr)
    return ds, clf, clf.score(x_te, y_te)
