"""The bundled demo models are real: samples look like the class asked for, and holding the
mid layer at another class's mean activation steers what comes out."""

import numpy as np
import pytest
import torch
from demo_classifier import features, fit_classifier

from diffviews.adapters import get_adapter
from diffviews.core.extraction import extract_activations
from diffviews.core.generator import generate
from diffviews.core.masking import compute_mask_dict
from diffviews.demo import DEMO_MODELS, weights_path

SAMPLES_PER_CLASS = 12
STEER_PAIRS = {"digits": [(0, 1), (3, 7), (5, 4)]}


pytestmark = pytest.mark.slow  # hundreds of samples from the real demo models


@pytest.fixture(scope="module", params=DEMO_MODELS)
def model(request):
    name = request.param
    ds, clf, heldout = fit_classifier(name)
    adapter = get_adapter("edm-demo").from_checkpoint(weights_path(name), device="cpu")
    return name, ds, clf, heldout, adapter


def test_class_conditional_samples_are_recognised(model, record_property):
    name, ds, clf, heldout, adapter = model
    torch.manual_seed(0)
    hits = []
    for c in range(adapter.num_classes):
        r = generate(adapter, class_label=c, num_steps=20, guidance_scale=2.0, seed=100 + c,
                     num_samples=SAMPLES_PER_CLASS)
        hits.append(clf.predict(features(r.images)) == c)
    per_class = np.mean(hits, axis=1)
    sample_acc = float(np.mean(hits))
    record_property(f"{name}_heldout_accuracy", heldout)
    record_property(f"{name}_sample_accuracy", sample_acc)
    print(f"\n{name}: classifier held-out accuracy {heldout:.3f}, samples classified as asked "
          f"{sample_acc:.3f}, per class {np.round(per_class, 2).tolist()}")
    if heldout >= 0.95:
        assert sample_acc >= 0.90
    else:
        assert sample_acc >= heldout - 0.05


def _steer(adapter, ds, clf, src: int, dst: int, guidance: float = 1.0) -> tuple[float, float]:
    """Fraction of class-``dst`` samples classified as ``src`` with the mid layer held at the
    mean activation of 30 noised real ``src`` images, and without the mask."""
    shape = adapter.get_layer_shapes()["mid"]
    idx = np.flatnonzero(ds.labels == src)[:30]
    acts = extract_activations(adapter, ds.as_model_input()[idx], ds.labels[idx], [85.0, 70.0, 55.0], ["mid"])
    masks = compute_mask_dict(acts, range(len(acts["mid"])), {"mid": shape})
    kw = dict(class_label=dst, num_steps=20, guidance_scale=guidance, seed=1, num_samples=16, masks=masks)
    steered = clf.predict(features(generate(adapter, mask_steps=20, **kw).images))
    plain = clf.predict(features(generate(adapter, mask_steps=0, **kw).images))
    return float(np.mean(steered == src)), float(np.mean(plain == src))


def test_mid_layer_mask_steers_towards_the_neighbours_class(model):
    name, ds, clf, _, adapter = model
    if name not in STEER_PAIRS:
        pytest.skip(f"{name}: covered by test_shapes_mid_mask_shifts_samples_towards_the_source")
    for src, dst in STEER_PAIRS[name]:
        steered, plain = _steer(adapter, ds, clf, src, dst)
        print(f"\n{name} {src}->{dst}: with mask {steered:.2f} of class {src}, without {plain:.2f}")
        assert steered >= 0.5
        assert plain <= 0.1


def test_shapes_mid_mask_shifts_samples_towards_the_source(model):
    """Shapes keep much of their class in the encoder's skip connections, so the mid layer
    alone steers them less than digits (measured: 4 of 30 pairs reach 50 %). What must hold:
    over all ordered pairs the mask moves samples towards the source class."""
    name, ds, clf, _, adapter = model
    if name != "shapes":
        pytest.skip("digits are held to the stronger per-pair bar above")
    pairs = [(s, d) for s in range(adapter.num_classes) for d in range(adapter.num_classes) if s != d]
    results = np.array([_steer(adapter, ds, clf, s, d) for s, d in pairs])
    print(f"\nshapes over {len(pairs)} pairs: with mask {results[:, 0].mean():.3f} of the source class, "
          f"without {results[:, 1].mean():.3f}; pairs >= 50 %: {(results[:, 0] >= 0.5).sum()}")
    assert results[:, 0].mean() >= results[:, 1].mean() + 0.1
