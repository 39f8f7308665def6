"""The benchmark results as JSON and as a markdown table (machine, versions and backend first)."""

from __future__ import annotations

import json
from pathlib import Path

#: JSON keys every full result has (``a.b.c`` = nested); the smoke test checks them
REQUIRED_KEYS = (
    "map_fit.baseline_cold_s", "map_fit.ours_cold_s", "map_fit.speedup", "map_fit.baseline_warm_s",
    "map_fit.ours_warm_s", "layer_switch.miss_s", "layer_switch.hit_s",
    "callbacks.hover.p95_ms", "callbacks.click.p95_ms", "callbacks.knn.p95_ms", "callbacks.class_filter.p95_ms",
    "callbacks.figure.bytes_per_point", "generation.s", "generation.no_mask_s", "memory.rss_growth_pct",
    "startup.first_page_s", "scale", "cuml", "extraction", "environment.machine", "environment.versions",
    "environment.backend",
)


def lookup(results: dict, dotted: str):
    """``results["a"]["b"]`` for ``"a.b"``; KeyError naming the first missing part."""
    node = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"benchmark result has no {dotted!r} (missing {part!r})")
        node = node[part]
    return node


def write_json(results: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# ---- markdown ----------------------------------------------------------------------------------

def _get(results: dict, dotted: str):
    try:
        return lookup(results, dotted)
    except KeyError:
        return None


def _s(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f} s"


def _ms(value) -> str:
    return "–" if value is None else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _ratio(a, b) -> str:
    return "" if not a or not b else f" (**{a / b:.1f}×**)"


def _latency(results: dict, key: str) -> str:
    p50, p95 = _get(results, f"{key}.p50_ms"), _get(results, f"{key}.p95_ms")
    return "–" if p50 is None else f"p50 {_ms(p50)} · p95 {_ms(p95)}"


def _bytes(n) -> str:
    if n is None:
        return "–"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _problem(results: dict, section: str) -> str | None:
    node = results.get(section)
    if not isinstance(node, dict):
        return "not run"
    if "error" in node:  # its last line (a worker's error carries the worker's traceback), kept short
        last = [line.strip() for line in str(node["error"]).splitlines() if line.strip()][-1:] or ["?"]
        text = last[0].replace("|", "/")
        return f"error: {text[:300]}{'…' if len(text) > 300 else ''}"
    if "skipped" in node:
        return f"skipped: {node['skipped']}"
    return None


def _header(results: dict) -> list[str]:
    meta, env = results.get("meta", {}), results.get("environment", {})
    m, v, b = env.get("machine", {}), env.get("versions", {}), env.get("backend", {})
    versions = " · ".join(f"{k} {v[k]}" for k in ("python", "torch", "numpy", "scikit-learn", "umap-learn", "numba",
                                                  "gradio", "plotly", "cuml-cu12") if v.get(k))
    data = meta.get("data", {})
    return [
        f"Command: `{meta.get('command', 'diffviews bench')}`" + (" (quick: timings not meaningful)"
                                                                 if meta.get("quick") else ""),
        "",
        f"- Machine: {m.get('cpu')}, {m.get('cpu_count')} cores, {m.get('memory_gib')} GiB RAM, "
        f"GPU: {m.get('gpu') or 'none'}; load average at start {m.get('load_average_at_start')}, "
        f"at end {meta.get('load_average_at_end')}",
        f"- Versions: {versions}",
        f"- Backend: UMAP on {b.get('umap')}, torch on {b.get('torch_device')} with {b.get('torch_threads')} "
        f"thread(s), numba JIT disk cache {'on' if b.get('numba_jit_disk_cache') else 'off'}",
        f"- Data: model `{data.get('model')}` (second model `{data.get('second_model')}`), layer "
        f"`{data.get('layer')}`, {data.get('n_points')} points × {data.get('n_features')} features",
        "",
    ]


def _main_rows(r: dict) -> list[tuple[str, str]]:
    rows = []
    if _problem(r, "map_fit") is None:
        f = r["map_fit"]
        rows += [
            ("Map fit, cold (fresh process, imports + JIT): baseline → ours",
             f"{_s(f['baseline_cold_s'])} → {_s(f['ours_cold_s'])}{_ratio(f['baseline_cold_s'], f['ours_cold_s'])}"),
            ("Map fit, warm (same process): baseline → ours",
             f"{_s(f['baseline_warm_s'])} → {_s(f['ours_warm_s'])}{_ratio(f['baseline_warm_s'], f['ours_warm_s'])}"),
            ("Map quality (share of 15 nearest neighbours kept): baseline / ours",
             f"{f.get('baseline_knn_preservation')} / {f.get('ours_knn_preservation')}"),
        ]
    else:
        rows.append(("Map fit", _problem(r, "map_fit")))
    if _problem(r, "layer_switch") is None:
        sw = r["layer_switch"]
        rows += [
            (f"Layer switch, cache miss (`{sw['layer']}`: extract + fit + draw)",
             f"{_s(sw['miss_s'])} (extract {_s(sw['miss_extract_s'])}, fit {_s(sw['miss_fit_s'])}"
             + (f", save + draw {_s(sw['miss_rest_s'])})" if 'miss_rest_s' in sw else ")")),
            ("Layer switch, cache hit: on disk / in memory", f"{_s(sw['hit_s'], 3)} / {_s(sw['hit_memory_s'], 3)}"),
        ]
        if sw.get("plain_cold_s") is not None:
            rows.append(("… the plain cold pipeline on the missed layer (fresh process, fit only); 15-NN kept "
                         "plain / miss", f"{_s(sw['plain_cold_s'])}{_ratio(sw['plain_cold_s'], sw['miss_s'])}; "
                         f"{sw.get('plain_knn_preservation')} / {sw.get('miss_knn_preservation')}"))
    else:
        rows.append(("Layer switch", _problem(r, "layer_switch")))
    if _problem(r, "callbacks") is None:
        c = r["callbacks"]
        calls = c["hover"]["calls"]
        rows += [(f"Hover ({calls} calls)", _latency(r, "callbacks.hover")),
                 ("Click: select point (new figure, preview, gallery)", _latency(r, "callbacks.click")),
                 ("KNN k=10: on the map / in activation space",
                  f"{_latency(r, 'callbacks.knn')} / {_latency(r, 'callbacks.knn_activations')}"),
                 ("Class filter", _latency(r, "callbacks.class_filter")),
                 ("Figure payload", f"{c['figure']['bytes_per_point']} bytes/point ({_bytes(c['figure']['bytes'])} "
                                    f"for {c['n_points']} points)")]
    else:
        rows.append(("Callbacks", _problem(r, "callbacks")))
    if _problem(r, "generation") is None:
        g = r["generation"]
        one = f"; 1 torch thread: {_s(g['s_1_thread'])}" if g.get("s_1_thread") is not None else ""
        rows += [(f"Generation, {g['steps']} steps, masked + trajectory projection",
                  f"{_s(g['s'])} (projection {_ms(g['projection_ms'])}{one})"),
                 (f"Generation, {g['steps']} steps, no masking", _s(g["no_mask_s"])),
                 ("Generation, first call of a process (loads weights and pipeline)", _s(g["first_s"]))]
    else:
        rows.append(("Generation", _problem(r, "generation")))
    if _problem(r, "memory") is None:
        mem = r["memory"]
        rss = mem["rss_after_cycle_mib"]
        rows.append((f"Memory: RSS over {mem['cycles']} round trips {' → '.join(mem['models'])} → "
                     f"{mem['models'][0]}", f"{mem['rss_growth_pct']:+.1f} % ({rss[0]:.0f} → {rss[-1]:.0f} MiB; "
                                            f"{mem['rss_after_load_mib']:.0f} MiB after the first load)"))
    else:
        rows.append(("Memory", _problem(r, "memory")))
    if _problem(r, "startup") is None:
        st = r["startup"]
        imports = ", ".join(f"{name} {_s(st[f'import_{name}_s'])}" for name in ("torch", "gradio", "umap")
                            if st.get(f"import_{name}_s") is not None)
        alone = f"; alone: {imports}" if imports else ""
        rows += [("App start → first served page",
                  f"{_s(st['first_page_s'])} (import of the app module {_s(st['import_app_s'])}{alone})"),
                 ("App start → background umap warm-up done", _s(st.get("warmup_done_s"), 1))]
    else:
        rows.append(("App start", _problem(r, "startup")))
    if _problem(r, "scale") is None:
        for n, sc in r["scale"].items():
            rows.append((f"Scale, {int(n):,} synthetic points: payload / click",
                         f"{_bytes(sc['payload_bytes'])} ({sc['bytes_per_point']} B/point) / "
                         f"{_latency(r, f'scale.{n}.click')}"))
    else:
        rows.append(("Scale", _problem(r, "scale")))
    if _problem(r, "cuml") is None:
        cu = r["cuml"]
        rows.append(("Map fit warm: umap-learn → cuML",
                     f"{_s(cu['umap_learn_warm_s'])} → {_s(cu['cuml_warm_s'])}"
                     f"{_ratio(cu['umap_learn_warm_s'], cu['cuml_warm_s'])}"))
    else:
        rows.append(("cuML vs umap-learn", _problem(r, "cuml")))
    if _problem(r, "extraction") is None:
        ex = r["extraction"]
        for device in ("cpu", "cuda"):
            pps = ex.get(f"{device}_points_per_s")
            if pps:
                rows.append((f"Extraction throughput per family, tiny random models, {device.upper()}"
                             + (" (1 thread)" if device == "cpu" else ""),
                             " · ".join(f"{family} {v:,.0f} points/s" for family, v in pps.items())))
    else:
        rows.append(("Extraction per family", _problem(r, "extraction")))
    return rows


def _before_after_rows(r: dict) -> list[tuple[str, str, str]]:
    f, sw, st = r.get("map_fit", {}), r.get("layer_switch", {}), r.get("startup", {})
    rows = []
    if f.get("before_cold_s") is not None:
        rows += [("Map fit, cold (fresh process)", _s(f["before_cold_s"]),
                  f"{_s(f['ours_cold_s'])}{_ratio(f['before_cold_s'], f['ours_cold_s'])}"),
                 ("Map fit, cold, first process on a machine (empty JIT cache)", _s(f["before_cold_s"]),
                  f"{_s(f['ours_first_run_cold_s'])}{_ratio(f['before_cold_s'], f['ours_first_run_cold_s'])}"),
                 ("Map fit, warm", _s(f["before_warm_s"]),
                  f"{_s(f['ours_warm_s'])}{_ratio(f['before_warm_s'], f['ours_warm_s'])}")]
    if sw.get("miss_before_s") is not None:
        rows += [("Layer switch, cache miss", _s(sw["miss_before_s"]),
                  f"{_s(sw['miss_s'])}{_ratio(sw['miss_before_s'], sw['miss_s'])}"),
                 ("… of which the map fit", _s(sw["miss_fit_before_s"]),
                  f"{_s(sw['miss_fit_s'])}{_ratio(sw['miss_fit_before_s'], sw['miss_fit_s'])}")]
    if st.get("first_page_before_s") is not None:
        rows += [("App start → first served page", _s(st["first_page_before_s"]),
                  f"{_s(st['first_page_s'])}{_ratio(st['first_page_before_s'], st['first_page_s'])}"),
                 ("App start → background umap warm-up done", _s(st["warmup_done_before_s"], 1),
                  f"{_s(st['warmup_done_s'], 1)}{_ratio(st['warmup_done_before_s'], st['warmup_done_s'])}")]
    return rows


#: the issue's browser targets (p95, ms) per action and size
BROWSER_TARGETS = {"page": {4000: 2000, 100000: 3000, 1000000: 10000},
                   "hover": {4000: 100, 100000: 150, 1000000: 250},
                   "click": {4000: 250, 100000: 400, 1000000: 1000},
                   "knn": {4000: 250, 100000: 400, 1000000: 1000},
                   "lasso": {4000: 250, 100000: 400, 1000000: 1000}}
BROWSER_ACTIONS = {"page": "page → plot drawn", "hover": "hover → preview shown", "click": "click → selected ring",
                   "knn": "KNN → rings", "lasso": "box select → neighbour rings"}


def _browser_cell(run: dict | None, n: str, action: str) -> str:
    cell = (run or {}).get(n, {}).get(action)
    if not cell:
        return "–"
    if "error" in cell:
        return cell["error"]
    return f"{_ms(cell['p95_ms'])}"


def browser_rows(results: dict) -> list[str]:
    """The browser table: p95 per action and size, before (when measured) → after, next to the targets."""
    b = results.get("browser")
    if not b or "error" in b:
        return [f"Browser: {b['error']}"] if b else []
    after, before = b.get("after", {}), b.get("before")
    sizes = [k for k in after if k.isdigit()]
    head = " | ".join(f"{int(n):,} points: {'before → ' if before else ''}after (target)" for n in sizes)
    lines = [f"| p95 in chromium | {head} |", "|---|" + "---|" * len(sizes)]
    for action, label in BROWSER_ACTIONS.items():
        cells = []
        for n in sizes:
            target = BROWSER_TARGETS[action].get(int(n))
            now = _browser_cell(after, n, action)
            was = f"{_browser_cell(before, n, action)} → " if before else ""
            cells.append(f"{was}{now} (≤ {_ms(target)})" if target else f"{was}{now}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    loads = ", ".join(f"{int(n):,}: {after[n].get('load_average')}" for n in sizes)
    loads_per_size = after[sizes[0]]["page"]["actions"] if sizes else 0
    lines.append(f"\nLoad average (1, 5, 15 min) after each size: {loads}; {loads_per_size} page loads and "
                 "up to that many actions per cell.")
    return lines


def markdown(results: dict) -> str:
    """The results as markdown: header (command, machine, versions, backend), the main table
    and, when measured, our speed-ups before → after (same run)."""
    lines = _header(results)
    lines += ["| Measurement | Result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _main_rows(results)]
    before_after = _before_after_rows(results)
    if before_after:
        lines += ["", "Before → after our speed-ups (exact neighbours from BLAS instead of umap-learn's own search "
                  "below 16384 points; umap-learn's numba kernels cached on disk; app warm-up without the "
                  "nearest-neighbour-descent compile), measured in the same run:", "",
                  "| Measurement | Before | After |", "|---|---|---|"]
        lines += [f"| {name} | {before} | {after} |" for name, before, after in before_after]
    browser = browser_rows(results)
    if browser:
        lines += ["", "In the browser (headless chromium, time from the action to the visible result):", "", *browser]
    return "\n".join(lines) + "\n"
