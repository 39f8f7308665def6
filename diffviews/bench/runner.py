"""One benchmark run: a scratch copy of the data, every section in turn, one result dict.

Sections run on a temporary copy of the measured models (a cache-miss layer switch writes
a new layer; the user's data folder is never changed). A section that fails records
``{"error": ...}`` and the run goes on; ``failed_sections`` lists them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..data.layout import DataLayoutError, discover_models, load_config, model_paths
from .environment import describe, load_average

log = logging.getLogger(__name__)

SECTIONS = ("map_fit", "cuml", "startup", "memory", "layer_switch", "callbacks", "generation", "scale",
            "extraction", "browser")
FULL_SCALE = (10_000, 100_000, 1_000_000)
QUICK_SCALE = (10_000,)
#: clicks timed per synthetic size (fewer on the big maps: each click sends the whole figure)
FULL_CLICKS = {10_000: 100, 100_000: 30, 1_000_000: 10}


@dataclass
class BenchOptions:
    data_dir: Path
    model: str | None = None  # default: "digits" when present, else the first model found
    second_model: str | None = None  # default: another model in data_dir, else a copy of ``model``
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    command: str = "diffviews bench"
    #: another checkout (e.g. main) whose app the browser section also measures, as "before"
    browser_before: Path | None = None
    #: map sizes of the browser section (default: 4k, 100k and 1M; --quick: 4k)
    browser_sizes: tuple[int, ...] | None = None

    @property
    def calls(self) -> int:
        return 20 if self.quick else 200

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 5

    @property
    def cycles(self) -> int:
        return 2 if self.quick else 5

    @property
    def scale_sizes(self) -> list[int]:
        return list(QUICK_SCALE if self.quick else FULL_SCALE)


@dataclass
class Workspace:
    """The scratch data directory and what is measured in it."""

    data_dir: Path
    model: str
    second_model: str
    layer: str
    activations: Path
    info: dict = field(default_factory=dict)


def _choose_models(options: BenchOptions) -> tuple[str, str | None]:
    models = discover_models(options.data_dir)
    if not models:
        raise DataLayoutError(f"no models found in data directory {options.data_dir} (each model is a folder with "
                              f"a config.json); build the demo data with `diffviews build-demo`")
    for name in (options.model, options.second_model):
        if name is not None and name not in models:
            raise DataLayoutError(f"no model {name!r} in {options.data_dir}; models found: {', '.join(models)}")
    model = options.model or ("digits" if "digits" in models else models[0])
    second = options.second_model or next((m for m in models if m != model), None)
    if second == model:
        raise ValueError(f"--second-model must differ from --model ({model!r})")
    return model, second


def prepare(options: BenchOptions, root: Path) -> Workspace:
    """Copy the measured models into ``root``; a missing second model becomes a copy of the first."""
    import numpy as np

    model, second = _choose_models(options)
    shutil.copytree(options.data_dir / model, root / model)
    if second is None:
        second = f"{model}-copy"
        shutil.copytree(options.data_dir / model, root / second)
    else:
        shutil.copytree(options.data_dir / second, root / second)
    paths = model_paths(root, model)
    layer = load_config(paths)["default_layer"]
    activations = paths.activations(layer)
    if not activations.is_file():
        raise DataLayoutError(f"model {model!r} has no activations for its default layer {layer!r} "
                              f"({options.data_dir / model / 'activations'}); build it with `diffviews build-demo`")
    shape = np.load(activations, mmap_mode="r").shape
    return Workspace(root, model, second, layer, activations,
                     {"model": model, "second_model": second, "layer": layer, "n_points": int(shape[0]),
                      "n_features": int(shape[1])})


def _sections(options: BenchOptions, ws: Workspace) -> dict[str, Callable[[], dict]]:
    from . import (
        browser,
        callbacks,
        cuml_fit,
        extraction_families,
        generation,
        layer_switch,
        map_fit,
        memory,
        scale,
        startup,
    )

    def cuml() -> dict:
        import numpy as np

        return cuml_fit.measure(np.load(ws.activations), repeats=1 if options.quick else 2)

    clicks = {n: (5 if options.quick else FULL_CLICKS.get(n, 20)) for n in options.scale_sizes}

    def in_browser() -> dict:
        sizes = options.browser_sizes or (browser.QUICK_SIZES if options.quick else browser.SIZES)
        actions = 5 if options.quick else 20
        result = {"after": browser.measure(ws.data_dir, sizes, actions, actions)}
        if options.browser_before is not None:
            result["before"] = browser.measure(ws.data_dir, sizes, actions, actions, code_root=options.browser_before)
        return result
    return {
        "map_fit": lambda: map_fit.measure(ws.activations, options.quick),
        "cuml": cuml,
        "startup": lambda: startup.measure(ws.data_dir, ws.model, options.quick),
        "memory": lambda: memory.measure(ws.data_dir, ws.model, ws.second_model, options.cycles),
        "layer_switch": lambda: layer_switch.measure(ws.data_dir, ws.model, options.quick),
        "callbacks": lambda: callbacks.measure(ws.data_dir, ws.model, options.calls),
        "generation": lambda: generation.measure(ws.data_dir, ws.model, options.repeats),
        "scale": lambda: scale.measure(ws.data_dir, ws.model, options.scale_sizes, clicks),
        "extraction": lambda: extraction_families.section(options.quick),
        "browser": in_browser,
    }


def run(options: BenchOptions) -> dict:
    """Every section of ``options.sections``, in the order of ``SECTIONS``; see the package docs."""
    unknown = [s for s in options.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")
    options.data_dir = Path(options.data_dir)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="diffviews-bench-"))
    try:
        return _run_sections(options, root, started)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_sections(options: BenchOptions, root: Path, started: float) -> dict:
    ws = prepare(options, root)
    results: dict = {"meta": {"command": options.command, "quick": options.quick,
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "data": ws.info, "section_seconds": {}, "failed_sections": []},
                     "environment": describe()}
    funcs = _sections(options, ws)
    for name in SECTIONS:
        if name not in options.sections:
            continue
        log.info("bench: %s ...", name)
        t0 = time.perf_counter()
        try:
            results[name] = funcs[name]()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            log.exception("bench: section %s failed", name)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results["meta"]["failed_sections"].append(name)
        seconds = time.perf_counter() - t0
        results["meta"]["section_seconds"][name] = round(seconds, 1)
        log.info("bench: %s done in %.1f s", name, seconds)
    results["meta"]["load_average_at_end"] = load_average()
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    return results
