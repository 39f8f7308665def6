"""Bundled demo models (weights in ``weights/`` as .safetensors) and their datasets."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_MODELS = ("digits", "shapes")


def weights_path(model: str) -> Path:
    if model not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {model!r}; known: {', '.join(DEMO_MODELS)}")
    return WEIGHTS_DIR / f"{model}.safetensors"
