"""``diffviews soak``: many visitors at once against a real app process, as on a public host.

The app is started as its own process on a free 127.0.0.1 port (``AppServer``), with its
temporary files in a scratch folder so their growth can be measured. Then, for
``duration`` seconds:

- ``sessions`` well-behaved visitors (each a ``gradio_client.Client``, so each its own
  browser session) hover, click, ask for neighbours, switch layers and models, generate
  and export at human rates. After every action a visitor checks that what the app says
  about *its* session is what it did (model, layer, selection, its own generations and no
  one else's): any difference is a cross-session effect.
- ``abusive`` visitors bypass the queue with raw REST calls, flood the queue with
  generations and upload oversized files. What the app answered is recorded (refused or
  not), never counted as an error of the well-behaved visitors.

The result: requests by kind, errors, cross-session effects, p50/p95 latency per kind,
the app's RSS and disk use at start and end, and what the abusive visitors achieved.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .timing import rounded

#: what a well-behaved visitor does, with relative weights (hover is what people do most)
ACTIONS = {"hover": 40, "click": 18, "knn": 10, "frame": 6, "layer": 6, "model": 4, "generate": 10, "export": 6}
#: actions whose p95 latency must stay low while generations run
LIGHT = ("hover", "click", "knn", "frame")
#: the app's handler names of the light actions (its timing log)
SERVER_LIGHT = ("hover", "select_point", "suggest_knn", "step_frame", "plot_event", "filter_class")
#: seconds a visitor waits between actions (uniform), like a person looking at the page
THINK_S = (0.3, 1.2)
ERROR_PREFIX = "**Error:**"
#: the generation a well-behaved visitor asks for: (class, steps, mask steps, α, guidance,
#: noise max, noise min, noise mode, seed, samples) — small, as the demo's defaults
GEN_STEPS = 6
UPLOAD_BYTES = 64 * 1024 * 1024
FLOOD_JOBS = 20
FLOOD_SIZE = (50, 8)  # steps, samples of each flooded generation


# ---- the app process -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """End a process started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def folder_bytes(path: Path) -> int:
    """Bytes of every file below ``path`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def process_rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes of process ``pid`` and its children (the app's GPU worker, if any);
    ``field`` "RssAnon" counts the heap only, "RssFile" the mapped files (the data's
    memory-mapped activations, which the kernel may drop and reload)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{field}:"))
        except (OSError, StopIteration):
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(c) for c in fh.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


class AppServer:
    """``python -m diffviews.visualization.app`` on a free 127.0.0.1 port, in its own process
    session, its temp files (Gradio's cache, exports) under ``scratch``. A context manager:
    the app is stopped (with its children) on exit."""

    def __init__(self, data_dir: Path, scratch: Path, extra_args: list[str] | None = None,
                 env: dict | None = None, start_timeout: float = 300.0):
        self.data_dir, self.scratch = Path(data_dir), Path(scratch)
        self.tmp = self.scratch / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                    "DIFFVIEWS_TIMING_LOG": "1",
                    "TMPDIR": str(self.tmp), "GRADIO_TEMP_DIR": str(self.tmp / "gradio"), **(env or {})}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.scratch / "app.log"

    def __enter__(self) -> AppServer:
        cmd = [sys.executable, "-m", "diffviews.visualization.app", "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--host", "127.0.0.1", "--device", "cpu", *self.extra_args]
        self._log = open(self.log_path, "wb")  # a file: a full pipe would stall the app
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        try:
            self._wait_for_page()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_page(self) -> None:
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.proc.returncode} before serving a page; "
                                   f"its log: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - t0 > self.start_timeout:
                raise RuntimeError(f"the app served no page at {self.url} within {self.start_timeout:.0f} s")
            time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def handler_timings(self) -> dict[str, list[float]]:
        """Milliseconds per handler run inside the app (its ``diffviews.timing`` log lines):
        the handler alone, without the queue or the client."""
        out = defaultdict(list)
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            _, sep, rest = line.partition("diffviews.timing: ")
            parts = rest.split()
            if sep and len(parts) == 2:
                try:
                    out[parts[0]].append(float(parts[1]))
                except ValueError:
                    pass
        return dict(out)

    def rss(self, field: str = "VmRSS") -> int:
        return process_rss(self.proc.pid, field) if self.proc is not None else 0

    def memory(self) -> dict:
        """RSS in all, its heap part (anonymous) and its mapped-file part."""
        return {"rss_bytes": self.rss(), "anon_bytes": self.rss("RssAnon"), "file_bytes": self.rss("RssFile")}

    def disk(self) -> dict:
        return {"tmp_bytes": folder_bytes(self.tmp), "data_bytes": folder_bytes(self.data_dir)}

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()


# ---- recording -----------------------------------------------------------------------------

@dataclass
class Tally:
    """What every visitor did and saw, shared by the visitor threads."""

    latencies: dict = field(default_factory=lambda: defaultdict(list))  # kind -> [ms]
    errors: list = field(default_factory=list)  # (visitor, kind, message)
    cross: list = field(default_factory=list)  # (visitor, kind, what differed)
    busy: dict = field(default_factory=lambda: defaultdict(int))  # kind -> "busy, try again" answers
    quota_drops: int = 0  # a visitor's oldest generations dropped by its own per-session quota
    abuse: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))  # kind -> outcome -> n
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timing(self, kind: str, ms: float) -> None:
        with self.lock:
            self.latencies[kind].append(ms)

    def error(self, who: str, kind: str, message: str) -> None:
        with self.lock:
            self.errors.append((who, kind, message[:300]))

    def crossed(self, who: str, kind: str, what: str) -> None:
        with self.lock:
            self.cross.append((who, kind, what[:300]))

    def abused(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.abuse[kind][outcome] += 1


class Visitor:
    """One well-behaved session: an own ``Client``, what it expects its session to be, and a
    loop of actions that checks the app's answer after each one."""

    def __init__(self, url: str, name: str, tally: Tally, rng: random.Random, downloads: Path):
        from gradio_client import Client

        from ..visualization.app import ENDPOINT_OUTPUTS

        self.outputs = ENDPOINT_OUTPUTS
        self.client = Client(url, verbose=False, download_files=str(downloads))
        self.name, self.tally, self.rng = name, tally, rng
        self.model = self.layer = None
        self.models: list[str] = []
        self.layers: list[str] = []
        self.n_points = 0
        self.selected: int | None = None
        self.generations: list[str] = []  # every id this session created that the app should still list
        self.active: str | None = None  # the generation the app shows this session (frames, export)

    def call(self, kind: str, api: str, *args) -> dict | None:
        t0 = time.perf_counter()
        try:
            result = self.client.predict(*args, api_name=f"/{api}")
        except Exception as exc:  # noqa: BLE001 - any failure of a well-behaved call is an error to report
            self.tally.error(self.name, kind, f"{type(exc).__name__}: {exc}")
            return None
        self.tally.timing(kind, 1000.0 * (time.perf_counter() - t0))
        result = result if isinstance(result, (list, tuple)) else (result,)
        out = dict(zip(self.outputs[api], result))
        status = out.get("status")
        if isinstance(status, str) and status.startswith(ERROR_PREFIX):
            if "busy" in status.lower():
                with self.tally.lock:
                    self.tally.busy[kind] += 1
            else:
                self.tally.error(self.name, kind, status)
            return None
        return out

    def check(self, kind: str, out: dict | None) -> None:
        """The app's view of this session must be what this visitor made it."""
        info = (out or {}).get("session_info")
        if not isinstance(info, dict):
            return
        if info.get("model") != self.model or info.get("layer") != self.layer:
            self.tally.crossed(self.name, kind, f"model/layer {info.get('model')}/{info.get('layer')}, "
                                                f"expected {self.model}/{self.layer}")
        if kind != "model" and info.get("selected") != self.selected:
            self.tally.crossed(self.name, kind, f"selected {info.get('selected')}, expected {self.selected}")
        listed = list(info.get("generations") or [])
        foreign = [g for g in listed if g not in self.generations]
        lost = [g for g in self.generations if g not in listed]
        # the session's own quota drops its oldest generations: only a gap elsewhere is lost
        kept = [g for g in self.generations if g in listed]
        if lost and kept and self.generations.index(kept[0]) == len(lost):
            with self.tally.lock:
                self.tally.quota_drops += len(lost)
            lost = []
        if foreign or lost:
            self.tally.crossed(self.name, kind, f"generations: {len(foreign)} foreign, {len(lost)} lost")
        self.generations = [g for g in self.generations if g in listed]
        self.active = info.get("active")

    def start(self) -> None:
        """Learn the session's model, layers and size from a first harmless call."""
        out = self.call("click", "select_point", 0, False) or {}
        info = out.get("session_info") or {}
        self.model, self.layer = info.get("model"), info.get("layer")
        self.models, self.layers = list(info.get("models") or []), list(info.get("layers") or [])
        self.n_points, self.selected = int(info.get("n_points") or 1), 0
        if self.model is None:
            raise RuntimeError(f"{self.name}: the app did not describe the session: {out}")

    def act(self, kind: str) -> None:
        rng = self.rng
        if kind == "hover":
            i = rng.randrange(self.n_points)
            out = self.call(kind, "hover", json.dumps({"kind": "hover", "points": [{"i": i, "m": "pts"}]}))
            if out is not None and f"#{i}**" not in str(out.get("preview_info")):
                self.tally.crossed(self.name, kind, f"hover on #{i} previewed {str(out.get('preview_info'))[:60]}")
            return
        if kind == "click":
            i = rng.randrange(self.n_points)
            out = self.call(kind, "select_point", i, False)
            if out is not None:
                self.selected = i
        elif kind == "knn":
            if self.selected is None:
                return
            out = self.call(kind, "knn", rng.randint(3, 12), rng.choice(["map", "activations"]))
        elif kind == "frame":
            if not self.active:
                return
            out = self.call(kind, rng.choice(["prev_frame", "next_frame"]))
        elif kind == "layer":
            choices = [v for v in self.layers[:3] if v != self.layer]  # at most 3 layers per model
            if not choices:
                return
            layer = rng.choice(choices)
            out = self.call(kind, "switch_layer", layer)
            if out is not None:
                self.layer = layer  # the points are the same on every layer: the selection stays
        elif kind == "model":
            choices = [m for m in self.models if m != self.model]
            if not choices:
                return
            model = rng.choice(choices)
            out = self.call(kind, "switch_model", model)
            if out is not None:
                info = out.get("session_info") or {}
                self.model, self.layer, self.selected = model, info.get("layer"), None
                self.layers, self.n_points = list(info.get("layers") or []), int(info.get("n_points") or 1)
        elif kind == "generate":
            if self.selected is None:
                return
            out = self.call(kind, "generate", "From selected point", GEN_STEPS, 2, 1.0, 2.0, 100.0, 0.0,
                            "fixed", rng.randrange(1000), 1)
            active = ((out or {}).get("session_info") or {}).get("active")
            if active:
                self.generations.append(active)
        elif kind == "export":
            api = "export_generation" if self.active and rng.random() < 0.5 else "export_selection"
            if api == "export_selection" and self.selected is None:
                return
            out = self.call(kind, api)
            if out is not None and not (out.get("export_file") and Path(out["export_file"]).is_file()):
                self.tally.error(self.name, kind, f"{api} returned no file: {out.get('export_file')!r}")
            return
        else:
            raise ValueError(f"unknown action {kind!r}")
        self.check(kind, out)

    def run(self, deadline: float) -> None:
        kinds, weights = list(ACTIONS), list(ACTIONS.values())
        try:
            self.start()
            while time.monotonic() < deadline:
                self.act(self.rng.choices(kinds, weights)[0])
                time.sleep(self.rng.uniform(*THINK_S))
        except Exception as exc:  # noqa: BLE001 - a visitor that dies is reported, the soak goes on
            self.tally.error(self.name, "visitor", f"{type(exc).__name__}: {exc}")
        finally:
            self.client.close()


# ---- abusive visitors ----------------------------------------------------------------------

def _http(url: str, data: bytes, content_type: str, timeout: float = 60.0) -> int:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def abuse_rest(url: str, tally: Tally) -> None:
    """A generation through the plain REST route, skipping the queue."""
    body = json.dumps({"data": ["From selected point", 50, 2, 1.0, 2.0, 100.0, 0.0, "fixed", 0, 8]}).encode()
    code = _http(url + "gradio_api/run/generate", body, "application/json")
    tally.abused("rest_bypass", "accepted" if code == 200 else f"refused {code}")


def abuse_upload(url: str, tally: Tally) -> None:
    """An oversized anonymous upload."""
    boundary = "diffviews-soak"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + b"\0" * UPLOAD_BYTES + f"\r\n--{boundary}--\r\n".encode()
    code = _http(url + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}")
    tally.abused("oversized_upload", "accepted" if code == 200 else f"refused {code}")


def abuse_flood(url: str, tally: Tally, downloads: Path, deadline: float) -> None:
    """One session submitting many large generations at once; jobs still waiting at the
    deadline are cancelled (and counted as such)."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=str(downloads))
    try:
        client.predict(0, False, api_name="/select_point")
        jobs = [client.submit("From selected point", FLOOD_SIZE[0], 2, 1.0, 2.0, 100.0, 0.0, "fixed", s, FLOOD_SIZE[1],
                              api_name="/generate") for s in range(FLOOD_JOBS)]
        for job in jobs:
            try:
                result = job.result(timeout=max(deadline - time.monotonic(), 0.0) + 30.0)
                named = dict(zip(_outputs("generate"), result)) if isinstance(result, (list, tuple)) else {}
                status = str(named.get("status", result))
                tally.abused("queue_flood", "refused busy" if "busy" in status.lower() else
                             ("refused other" if status.startswith(ERROR_PREFIX) else "ran"))
            except TimeoutError:
                job.cancel()
                tally.abused("queue_flood", "still queued at the end")
            except Exception as exc:  # noqa: BLE001 - a refused job is the outcome we hope for
                tally.abused("queue_flood", f"refused {type(exc).__name__}")
    finally:
        client.close()


def abuser(url: str, tally: Tally, deadline: float, downloads: Path, rng: random.Random) -> None:
    """The abusive actions in turn (queue bypass, oversized upload, queue flood), a pause
    between them, until the deadline."""
    actions = [lambda: abuse_rest(url, tally), lambda: abuse_upload(url, tally),
               lambda: abuse_flood(url, tally, downloads, deadline)]
    k = 0
    while time.monotonic() < deadline:
        try:
            actions[k % len(actions)]()
        except Exception as exc:  # noqa: BLE001 - recorded, the soak goes on
            tally.abused("abuser", f"failed {type(exc).__name__}")
        k += 1
        time.sleep(rng.uniform(2.0, 6.0))


# ---- warm-up -------------------------------------------------------------------------------

def warm_up(url: str, downloads: Path, layers: int = 3) -> None:
    """One visit to every model and its first ``layers`` layers (building any that are
    missing), with a KNN in activation space, a generation and its export each, so that the steady state
    the soak measures starts with the caches full (the "after warm-up" RSS)."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=str(downloads))
    def info() -> dict:
        return dict(zip(_outputs("select_point"), client.predict(0, False, api_name="/select_point")))["session_info"]

    try:
        for model in info()["models"]:
            client.predict(model, api_name="/switch_model")
            for layer in info()["layers"][:layers]:
                client.predict(layer, api_name="/switch_layer")
                client.predict(0, False, api_name="/select_point")
                client.predict(5, "activations", api_name="/knn")
            for steps, samples in ((GEN_STEPS, 1), (FLOOD_SIZE[0], FLOOD_SIZE[1])):  # the largest asked for
                client.predict("From selected point", steps, 2, 1.0, 2.0, 100.0, 0.0, "fixed", 0, samples,
                               api_name="/generate")
            client.predict(api_name="/export_generation")
            client.predict(api_name="/clear_trajectories")
    finally:
        client.close()


def _outputs(api: str) -> list[str]:
    from ..visualization.app import ENDPOINT_OUTPUTS

    return ENDPOINT_OUTPUTS[api]


# ---- the run -------------------------------------------------------------------------------

@dataclass
class SoakOptions:
    data_dir: Path
    sessions: int = 8
    duration: float = 300.0
    abusive: int = 1
    seed: int = 0
    warmup: float = 20.0  # seconds of the run before the "after warm-up" RSS is taken
    warm_up: bool = True  # visit every model and 3 layers of each first (see ``warm_up``)
    app_args: list = field(default_factory=list)


def summarise(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values)
    return {"n": len(values), "p50_ms": rounded(np.percentile(arr, 50), 1),
            "p95_ms": rounded(np.percentile(arr, 95), 1), "max_ms": rounded(arr.max(), 1)}


def run_soak(options: SoakOptions) -> dict:
    """Start the app on a scratch copy of ``options.data_dir``, run the visitors, stop the app,
    and return the report (see the module docstring)."""
    if options.sessions < 1 or options.duration <= 0 or options.abusive < 0:
        raise ValueError(f"sessions must be >= 1, duration > 0 and abusive >= 0; got {options.sessions}, "
                         f"{options.duration}, {options.abusive}")
    scratch = Path(tempfile.mkdtemp(prefix="diffviews-soak-"))
    # gradio_client leaves an empty folder in the temp dir per file it downloads: keep them in scratch
    client_tmp, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        data = scratch / "data"
        shutil.copytree(options.data_dir, data)
        downloads = scratch / "downloads"
        tally = Tally()
        with AppServer(data, scratch, extra_args=list(options.app_args)) as app:
            start = {**app.memory(), **app.disk()}
            load_start = os.getloadavg()
            if options.warm_up:
                w0 = time.monotonic()
                warm_up(app.url, downloads / "warm-up")
                warmup_s = time.monotonic() - w0
                start = {**start, **app.memory()}
            else:
                warmup_s = 0.0
            t0 = time.monotonic()
            deadline = t0 + options.duration
            threads = []
            for k in range(options.sessions):
                visitor = Visitor(app.url, f"visitor-{k}", tally, random.Random(options.seed * 1000 + k),
                                  downloads / f"v{k}")
                threads.append(threading.Thread(target=visitor.run, args=(deadline,), daemon=True))
            for k in range(options.abusive):
                threads.append(threading.Thread(target=abuser, daemon=True, args=(
                    app.url, tally, deadline, downloads / f"a{k}", random.Random(options.seed * 1000 + 500 + k))))
            for t in threads:
                t.start()
            warm = None
            while any(t.is_alive() for t in threads):
                if warm is None and time.monotonic() - t0 >= min(options.warmup, options.duration / 2):
                    warm = app.memory()
                time.sleep(0.5)
                if time.monotonic() > deadline + 900:
                    break  # a visitor stuck in a call; the report says so through its missing calls
            end = {**app.memory(), **app.disk()}
            inside = app.handler_timings()
            load_end = os.getloadavg()
            app_alive = app.proc.poll() is None
        wall = time.monotonic() - t0
        # stopped as hosts stop it (SIGTERM): what it leaves behind in its temp folder
        after_stop = {"tmp_bytes": folder_bytes(app.tmp),
                      "export_folders": len(list(app.tmp.glob("diffviews-export-*")))}
    finally:
        tempfile.tempdir = client_tmp
        shutil.rmtree(scratch, ignore_errors=True)
    warm = warm or start
    light = [ms for kind in LIGHT for ms in tally.latencies.get(kind, [])]
    return {
        "sessions": options.sessions, "abusive": options.abusive, "duration_s": options.duration,
        "wall_s": rounded(wall, 1), "app_alive_at_end": app_alive, "warm_up_s": rounded(warmup_s, 1),
        "load_average": {"start": [rounded(v, 2) for v in load_start], "end": [rounded(v, 2) for v in load_end],
                         "cpus": os.cpu_count()},
        "requests": {k: len(v) for k, v in sorted(tally.latencies.items())},
        "latency": {k: summarise(v) for k, v in sorted(tally.latencies.items())},
        "light_latency": summarise(light),
        "handler_latency": {k: summarise(v) for k, v in sorted(inside.items())},
        "light_handler_latency": summarise([ms for k in SERVER_LIGHT for ms in inside.get(k, [])]),
        "errors": len(tally.errors), "error_examples": tally.errors[:10],
        "cross_session_effects": len(tally.cross), "cross_examples": tally.cross[:10],
        "busy": dict(tally.busy), "own_quota_drops": tally.quota_drops,
        "abuse": {k: dict(v) for k, v in tally.abuse.items()},
        "rss": _growth(start, warm, end, "rss_bytes"),
        "rss_anon": _growth(start, warm, end, "anon_bytes"),
        "rss_file": _growth(start, warm, end, "file_bytes"),
        "disk": {"start": {k: v for k, v in start.items() if k in ("tmp_bytes", "data_bytes")},
                 "end": {k: v for k, v in end.items() if k in ("tmp_bytes", "data_bytes")},
                 "after_stop": after_stop},
    }


def _growth(start: dict, warm: dict, end: dict, key: str) -> dict:
    return {"start": start[key], "after_warmup": warm[key], "end": end[key],
            "growth_after_warmup_pct": rounded(100.0 * (end[key] - warm[key]) / max(warm[key], 1), 1)}


def markdown(report: dict) -> str:
    """The report as a short markdown table."""
    mib = 1024 * 1024
    lat = report["latency"]
    rows = [("Well-behaved sessions / abusive", f"{report['sessions']} / {report['abusive']}"),
            ("Duration (wall)", f"{report['duration_s']:.0f} s ({report['wall_s']:.0f} s)"),
            ("Requests", " · ".join(f"{k} {n}" for k, n in report["requests"].items())),
            ("Errors (well-behaved)", str(report["errors"])),
            ("Cross-session effects", str(report["cross_session_effects"])),
            ("Own oldest generations dropped by the per-session quota", str(report.get("own_quota_drops", 0))),
            ("Light handlers p50 / p95", f"{report['light_latency'].get('p50_ms')} ms / "
                                         f"{report['light_latency'].get('p95_ms')} ms"),
            ("Light handlers inside the app p50 / p95", f"{report['light_handler_latency'].get('p50_ms')} ms / "
                                                        f"{report['light_handler_latency'].get('p95_ms')} ms")]
    rows += [(f"{k} p50 / p95", f"{v.get('p50_ms')} ms / {v.get('p95_ms')} ms") for k, v in lat.items()]
    la = report.get("load_average")
    if la:
        rows.append(("Load average (1/5/15 min) start → end", f"{' '.join(map(str, la['start']))} → "
                                                              f"{' '.join(map(str, la['end']))} on {la['cpus']} CPUs"))
    for key, what in (("rss", "App RSS"), ("rss_anon", "… of which heap (RssAnon)"),
                      ("rss_file", "… of which mapped data files (RssFile)")):
        rss = report[key]
        rows.append((f"{what} start → after warm-up → end",
                     f"{rss['start'] / mib:.0f} → {rss['after_warmup'] / mib:.0f} → {rss['end'] / mib:.0f} MiB "
                     f"({rss['growth_after_warmup_pct']:+.1f} % after warm-up)"))
    d0, d1 = report["disk"]["start"], report["disk"]["end"]
    rows.append(("Temp files start → end", f"{d0['tmp_bytes'] / mib:.1f} → {d1['tmp_bytes'] / mib:.1f} MiB"))
    left = report["disk"].get("after_stop")
    if left:
        rows.append(("Left in the temp folder after SIGTERM", f"{left['tmp_bytes'] / mib:.1f} MiB, "
                     f"{left['export_folders']} export folder(s)"))
    rows.append(("Data folder start → end", f"{d0['data_bytes'] / mib:.1f} → {d1['data_bytes'] / mib:.1f} MiB"))
    for kind, outcomes in report["abuse"].items():
        rows.append((f"Abuse: {kind}", ", ".join(f"{k} {n}" for k, n in outcomes.items())))
    return "| Measurement | Result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
