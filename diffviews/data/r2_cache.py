"""A bucket-backed layer cache: per-layer artefacts mirrored to any S3-compatible store.

Cloudflare R2 by default; any S3-compatible endpoint works. Settings come from the
environment::

    R2_ACCOUNT_ID          Cloudflare account (gives https://<id>.r2.cloudflarestorage.com)
    R2_ACCESS_KEY_ID       access key
    R2_SECRET_ACCESS_KEY   secret
    R2_BUCKET_NAME         bucket
    R2_ENDPOINT_URL        any S3-compatible endpoint; overrides the one from the account id
    R2_REGION              signing region (default "auto", what R2 expects; e.g. us-east-1 for AWS)
    DIFFVIEWS_LAYER_CACHE_MAX_MB   local disk budget for layer files (unset: no budget)

What is stored per (model, layer), under keys that mirror the data directory
(``<model>/activations/<layer>.npy`` ...): the activations ``.npy`` and their ``.json``
sidecar, and the map ``.csv`` + ``.json`` (plus the aligned 3-D map when present). Only
csv/json/npy ever go to the bucket; never a pickle.

    cache = LayerCache("data")
    if not cache.fetch_layer("digits", "enc_8x8"):   # read-through: local, else the bucket
        ...extract and fit the layer...
        cache.upload_layer("digits", "enc_8x8")        # in the background
    cache.enforce_budget(protect=[("digits", "enc_8x8")])

Downloads go into a staging folder beside the model's files and are renamed into place
only when every file arrived whole and validated: each object within a size cap (the
``.npy`` within what its sidecar announces, checked before and while it downloads), its
sha256 recorded at upload present and matching, the activations all finite, then the
shape from the sidecar, the rows against metadata.csv and the build parameters against
this data folder. Missing credentials, a wrong endpoint, a timeout or a corrupt object:
one clear warning, the call returns False, and nothing local is lost or overwritten; the
same bad objects (same ETags) are not downloaded or reported again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .activations import list_layers, read_sidecar
from .layers import check_layer_files, layer_source, layer_state, source_mismatch
from .layout import DataLayoutError, ModelPaths, discover_models, load_config, model_paths
from .maps import ALIGNED_SUFFIX, load_embedding
from .metadata import load_metadata

log = logging.getLogger(__name__)

__all__ = ["R2Settings", "LayerCache", "BUDGET_ENV", "seed_layer"]

BUDGET_ENV = "DIFFVIEWS_LAYER_CACHE_MAX_MB"
PORTABLE_SUFFIXES = (".npy", ".csv", ".json")
_ENV_KEYS = ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME")
_SHA_KEY = "sha256"  # object metadata: checksum of the uploaded file
_CHUNK = 1 << 20
_NPY_ALIGN = 64  # numpy pads the .npy header so the data starts on a 64-byte boundary
_NPY_HEADER_MAX = 1 << 16
#: the largest object of each kind accepted from the bucket (the .npy: what its sidecar announces)
MAX_OBJECT_BYTES = {".json": 1 << 20, ".csv": 512 << 20, ".npy": 16 << 30}


@dataclass(frozen=True)
class R2Settings:
    """Where the bucket is and how patient to be with it."""

    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    endpoint_url: str
    region: str = "auto"
    connect_timeout: float = 3.0
    read_timeout: float = 15.0
    max_attempts: int = 2
    offline_retry_s: float = 60.0  # after a connection failure, skip the bucket this long

    @classmethod
    def from_env(cls, environ: dict | None = None) -> R2Settings | None:
        """Settings from ``R2_*`` variables; None when the bucket is not (fully) configured."""
        env = os.environ if environ is None else environ
        values = {k: env.get(k, "").strip() for k in (*_ENV_KEYS, "R2_ACCOUNT_ID", "R2_ENDPOINT_URL")}
        endpoint = values["R2_ENDPOINT_URL"] or (
            f"https://{values['R2_ACCOUNT_ID']}.r2.cloudflarestorage.com" if values["R2_ACCOUNT_ID"] else "")
        if not all(values[k] for k in _ENV_KEYS) or not endpoint:
            return None
        return cls(bucket=values["R2_BUCKET_NAME"], access_key_id=values["R2_ACCESS_KEY_ID"],
                   secret_access_key=values["R2_SECRET_ACCESS_KEY"], endpoint_url=endpoint,
                   region=env.get("R2_REGION", "").strip() or "auto")

    @staticmethod
    def missing(environ: dict | None = None) -> list[str]:
        """The variables still needed for a configured bucket."""
        env = os.environ if environ is None else environ
        out = [k for k in _ENV_KEYS if not env.get(k, "").strip()]
        if not (env.get("R2_ENDPOINT_URL", "").strip() or env.get("R2_ACCOUNT_ID", "").strip()):
            out.append("R2_ACCOUNT_ID or R2_ENDPOINT_URL")
        return out


class CacheMiss(Exception):
    """The layer (or one of its required files) is not in the bucket."""


@dataclass(frozen=True)
class _Artefact:
    """One file of a layer: where it lives locally, its key in the bucket, whether it must exist."""

    path: Path
    key: str
    required: bool
    group: str  # the files of one group are fetched together or not at all


class LayerCache:
    """Read-through bucket cache of per-layer files under ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: str | Path, settings: R2Settings | None = None,
                 max_local_mb: float | None = None):
        self.data_dir = Path(data_dir)
        self.settings = settings if settings is not None else R2Settings.from_env()
        self.max_local_bytes = _budget_bytes(max_local_mb)
        self._client = None
        self._client_lock = threading.Lock()
        self._layer_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._offline_until = 0.0
        self._warned_disabled = False
        self._bad: dict[tuple[str, str], dict[str, str]] = {}  # (model, layer) -> {key: ETag} that failed

    @classmethod
    def from_env(cls, data_dir: str | Path) -> LayerCache | None:
        """The cache the environment asks for: a bucket (``R2_*`` variables) and/or a local disk
        budget (``DIFFVIEWS_LAYER_CACHE_MAX_MB``); None when it asks for neither, so that an app
        without them runs as before and logs nothing about a cache."""
        if R2Settings.from_env() is None and not os.environ.get(BUDGET_ENV, "").strip():
            return None
        return cls(data_dir)

    # ---- state ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when a bucket is configured (it may still be unreachable)."""
        return self.settings is not None

    def __repr__(self) -> str:
        where = f"{self.settings.endpoint_url}/{self.settings.bucket}" if self.settings else "no bucket"
        return f"LayerCache({str(self.data_dir)!r}, {where})"

    def artefacts(self, model: str, layer: str) -> list[_Artefact]:
        """The files of one layer, in the order they are installed (data before descriptions)."""
        paths = model_paths(self.data_dir, model)
        files = [(paths.activations(layer), True, "activations"),
                 (paths.activations_sidecar(layer), True, "activations"),
                 (paths.embedding(layer), False, "map"),
                 (paths.embedding_meta(layer), False, "map"),
                 (paths.embedding(layer, ALIGNED_SUFFIX), False, "aligned"),
                 (paths.embedding_meta(layer, ALIGNED_SUFFIX), False, "aligned")]
        return [_Artefact(p, self.key(p), required, group) for p, required, group in files]

    def key(self, path: Path) -> str:
        """The bucket key of a file under the data directory (its relative POSIX path)."""
        return Path(path).relative_to(self.data_dir).as_posix()

    def is_local(self, model: str, layer: str) -> bool:
        """The layer's activations and 2-D map are on disk and valid for this data folder."""
        paths = model_paths(self.data_dir, model)
        try:
            return layer_state(paths, layer, _local_source(paths)).built
        except (ValueError, OSError):
            return False

    # ---- read-through ----------------------------------------------------------------------
    def fetch_layer(self, model: str, layer: str, protect: Iterable[tuple[str, str]] = ()) -> bool:
        """Make the layer local: True when it already is, or was downloaded whole and valid.

        False when the bucket is not configured or unreachable, lacks the layer, or holds
        something that does not validate (each failure logs one warning; a plain miss logs
        at info level). Local files are never replaced by anything that failed validation.
        After a download the disk budget is enforced, sparing this layer and ``protect``
        (e.g. the layers an app holds in memory).
        """
        with self._layer_lock(model, layer):
            if self.is_local(model, layer):
                self.touch(model, layer)
                return True
            if not self._remote_usable(f"fetch {model}/{layer}"):
                return False
            etags: dict[str, str] = {}
            try:
                if self._known_bad(model, layer):
                    log.debug("layer cache: %s/%s in the bucket failed validation before and is unchanged",
                              model, layer)
                    return False
                self._download_layer(model, layer, etags)
            except CacheMiss as miss:
                log.info("layer cache: %s/%s is not in bucket %r (%s)", model, layer, self.settings.bucket, miss)
                return False
            except Exception as exc:  # noqa: BLE001 - every failure is one warning and a local fallback
                if not _is_connection_error(exc) and etags:
                    self._bad[(model, layer)] = etags
                self._warn_failure(f"could not fetch {model}/{layer}", exc)
                return False
            self._bad.pop((model, layer), None)
        self.touch(model, layer)
        self.enforce_budget(protect=[(model, layer), *protect])
        return True

    def _known_bad(self, model: str, layer: str) -> bool:
        """The layer's objects failed validation before and still have the same ETags."""
        bad = self._bad.get((model, layer))
        if not bad:
            return False
        client = self._get_client()
        try:
            return all(client.head_object(Bucket=self.settings.bucket, Key=k).get("ETag") == e for k, e in bad.items())
        except Exception:  # noqa: BLE001 - changed or gone: try the download again
            return False

    def _download_layer(self, model: str, layer: str, etags: dict[str, str] | None = None) -> None:
        paths = model_paths(self.data_dir, model)
        paths.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".layer-fetch-", dir=paths.root))
        etags = {} if etags is None else etags
        try:
            staged = ModelPaths(staging)
            fetched = []
            for group in ("activations", "map", "aligned"):
                # descriptions first: the sidecar tells how large the .npy may be
                items = sorted((a for a in self.artefacts(model, layer) if a.group == group),
                               key=lambda a: a.path.suffix != ".json")
                try:
                    for a in items:
                        cap = _npy_cap(staged, layer) if a.path.suffix == ".npy" else None
                        etags[a.key] = self._download(a, staging / a.path.relative_to(paths.root), cap)
                except CacheMiss:
                    if any(a.required for a in items):
                        raise
                    for a in items:  # an optional group comes whole or not at all
                        (staging / a.path.relative_to(paths.root)).unlink(missing_ok=True)
                    continue
                fetched += items
            _check_finite(staged, layer)
            _validate_layer(staged, layer, paths, require_map=False)
            for a in fetched:
                os.replace(staging / a.path.relative_to(paths.root), a.path)
            log.info("layer cache: fetched %s/%s from bucket %r (%s)", model, layer, self.settings.bucket,
                     ", ".join(a.path.name for a in fetched))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _download(self, artefact: _Artefact, dest: Path, cap: int | None = None) -> str:
        """Download one object to ``dest`` within its size cap and with its checksum verified;
        returns its ETag."""
        from botocore.exceptions import ClientError

        client = self._get_client()
        cap = MAX_OBJECT_BYTES.get(artefact.path.suffix, MAX_OBJECT_BYTES[".csv"]) if cap is None else cap
        try:
            obj = client.get_object(Bucket=self.settings.bucket, Key=artefact.key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise CacheMiss(f"no object {artefact.key}") from None
            raise
        expected = obj.get("ContentLength")
        want = (obj.get("Metadata") or {}).get(_SHA_KEY)
        if expected is not None and int(expected) > cap:
            obj["Body"].close()
            raise DataLayoutError(f"object {artefact.key} has {int(expected)} bytes; at most {cap} are accepted "
                                  "(oversized object)")
        if not want:
            obj["Body"].close()
            raise DataLayoutError(f"object {artefact.key} has no {_SHA_KEY} checksum in its metadata (uploads by "
                                  "`diffviews` record one); refusing an unverifiable object")
        digest, size = hashlib.sha256(), 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as fh:
            for chunk in obj["Body"].iter_chunks(_CHUNK):
                size += len(chunk)
                if size > cap:
                    obj["Body"].close()
                    raise DataLayoutError(f"object {artefact.key} exceeds the {cap}-byte cap while downloading "
                                          "(oversized object)")
                fh.write(chunk)
                digest.update(chunk)
        if expected is not None and size != int(expected):
            raise DataLayoutError(f"object {artefact.key}: received {size} of {expected} bytes (truncated download)")
        if want != digest.hexdigest():
            raise DataLayoutError(f"object {artefact.key}: sha256 {digest.hexdigest()[:12]}… does not match the "
                                  f"{want[:12]}… recorded at upload (corrupt object)")
        return str(obj.get("ETag", ""))

    # ---- upload ----------------------------------------------------------------------------
    def upload_layer(self, model: str, layer: str, background: bool = True) -> bool | Future:
        """Copy the layer's local files (validated first) to the bucket.

        Returns True/False, or with ``background=True`` a Future of it. Only csv/json/npy
        are sent; the local pickle cache never leaves this machine.
        """
        if background:
            with self._client_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffviews-r2-upload")
            return self._executor.submit(self.upload_layer, model, layer, False)
        if not self._remote_usable(f"upload {model}/{layer}"):
            return False
        paths = model_paths(self.data_dir, model)
        try:
            with self._layer_lock(model, layer):  # eviction waits until the files are sent
                _validate_layer(paths, layer, paths, require_map=False)
                arts = self.artefacts(model, layer)
                groups = {a.group for a in arts if all(b.path.is_file() for b in arts if b.group == a.group)}
                todo = [a for a in arts if a.group in groups]
                client = self._get_client()
                for a in todo:
                    _put(client, self.settings.bucket, a)
        except Exception as exc:  # noqa: BLE001
            self._warn_failure(f"could not upload {model}/{layer}", exc)
            return False
        log.info("layer cache: uploaded %s/%s to bucket %r (%s)", model, layer, self.settings.bucket,
                 ", ".join(sorted(groups)))
        return True

    def in_bucket(self, model: str, layer: str) -> bool:
        """The bucket holds this layer's activations and 2-D map, consistent with each other,
        with the right .npy size, and built from this data folder's samples (when it has
        them). Downloads the small files only (sidecar, map CSV and JSON), never the .npy."""
        if not self._remote_usable(f"check {model}/{layer}"):
            return False
        paths = model_paths(self.data_dir, model)
        staging = Path(tempfile.mkdtemp(prefix=".layer-check-"))
        try:
            staged = ModelPaths(staging)
            npy, *small = [a for a in self.artefacts(model, layer) if a.group in ("activations", "map")]
            for a in small:
                self._download(a, staging / a.path.relative_to(paths.root))
            sidecar = read_sidecar(staged, layer)
            _check_source(sidecar, paths, layer)
            embedding, _ = load_embedding(staged, layer)
            if embedding.shape[0] != sidecar["N"]:
                raise DataLayoutError(f"the map of {model}/{layer} has {embedding.shape[0]} rows; the activations "
                                      f"have {sidecar['N']}")
            size = _head_size(self._get_client(), self.settings.bucket, npy.key)
            data_bytes = sidecar["N"] * sidecar["D"] * 4
            if not (0 < size - data_bytes <= 1 << 16 and (size - data_bytes) % _NPY_ALIGN == 0):
                raise DataLayoutError(f"{npy.key} has {size} bytes; a ({sidecar['N']}, {sidecar['D']}) float32 .npy "
                                      f"has {data_bytes} bytes of data plus a small header")
        except CacheMiss:
            return False
        except Exception as exc:  # noqa: BLE001
            self._warn_failure(f"could not check {model}/{layer}", exc)
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def reachable(self) -> bool:
        """The bucket answers with these credentials (one warning when it does not)."""
        if not self._remote_usable("check the bucket"):
            return False
        try:
            self._get_client().head_bucket(Bucket=self.settings.bucket)
        except Exception as exc:  # noqa: BLE001
            self._warn_failure("cannot reach the bucket", exc)
            return False
        return True

    def wait(self) -> None:
        """Finish pending background uploads."""
        with self._client_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # ---- local disk budget -----------------------------------------------------------------
    def touch(self, model: str, layer: str) -> None:
        """Record that the layer was just used (least-recently-used eviction reads this)."""
        now = time.time()
        for a in self.artefacts(model, layer):
            if a.path.is_file():
                os.utime(a.path, (now, now))

    def local_layers(self) -> list[tuple[str, str, int, float]]:
        """(model, layer, bytes on disk, last used) for every layer with activations on disk."""
        out = []
        for model in discover_models(self.data_dir):
            paths = model_paths(self.data_dir, model)
            for layer in list_layers(paths):
                files = self._layer_files(paths, model, layer)
                if files:
                    stats = [f.stat() for f in files]
                    out.append((model, layer, sum(s.st_size for s in stats), max(s.st_mtime for s in stats)))
        return out

    def _layer_files(self, paths: ModelPaths, model: str, layer: str) -> list[Path]:
        extra = [paths.reducer_cache(layer), paths.reducer_cache(layer, ALIGNED_SUFFIX)]
        return [p for p in [*(a.path for a in self.artefacts(model, layer)), *extra] if p.is_file()]

    def enforce_budget(self, protect: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """Delete least-recently-used layers until the layer files fit the budget.

        Never deletes a model's default layer (from its config.json) or a layer in
        ``protect``. Returns the (model, layer) pairs deleted, oldest first.
        """
        if self.max_local_bytes is None:
            return []
        keep = set(protect)
        for model in discover_models(self.data_dir):
            try:
                keep.add((model, load_config(model_paths(self.data_dir, model))["default_layer"]))
            except DataLayoutError:
                keep.update((model, layer) for layer in list_layers(model_paths(self.data_dir, model)))
        layers = self.local_layers()
        total = sum(size for _, _, size, _ in layers)
        evicted = []
        for model, layer, size, _ in sorted(layers, key=lambda t: t[3]):
            if total <= self.max_local_bytes:
                break
            if (model, layer) in keep:
                continue
            with self._layer_lock(model, layer):
                for path in self._layer_files(model_paths(self.data_dir, model), model, layer):
                    path.unlink(missing_ok=True)
            total -= size
            evicted.append((model, layer))
            log.info("layer cache: evicted %s/%s (%.1f MB) to stay within %s=%.1f", model, layer, size / 2**20,
                     BUDGET_ENV, self.max_local_bytes / 2**20)
        if total > self.max_local_bytes:
            log.info("layer cache: %.1f MB of layer files remain over the %.1f MB budget (default or "
                     "protected layers)", total / 2**20, self.max_local_bytes / 2**20)
        return evicted

    # ---- internals -------------------------------------------------------------------------
    def _layer_lock(self, model: str, layer: str) -> threading.Lock:
        with self._locks_guard:
            return self._layer_locks.setdefault((model, layer), threading.Lock())

    def _remote_usable(self, what: str) -> bool:
        if self.settings is None:
            if not self._warned_disabled:
                self._warned_disabled = True
                log.warning("layer cache: no bucket configured (missing %s); layers are extracted and kept "
                            "locally only", ", ".join(R2Settings.missing()))
            return False
        if time.monotonic() < self._offline_until:
            log.debug("layer cache: skipping %s, the bucket was unreachable moments ago", what)
            return False
        return True

    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                s = self.settings
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=s.endpoint_url, aws_access_key_id=s.access_key_id,
                    aws_secret_access_key=s.secret_access_key, region_name=s.region,
                    config=Config(connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                                  retries={"max_attempts": s.max_attempts, "mode": "standard"},
                                  signature_version="s3v4", s3={"addressing_style": "path"}))
            return self._client

    def _warn_failure(self, what: str, exc: Exception) -> None:
        s = self.settings
        reason = f"{type(exc).__name__}: {exc}"
        if _is_connection_error(exc):
            self._offline_until = time.monotonic() + s.offline_retry_s
            reason += f" (not trying the bucket again for {s.offline_retry_s:g} s)"
        log.warning("layer cache: %s at %s (bucket %r): %s; continuing with local files", what, s.endpoint_url,
                    s.bucket, reason)


def _npy_cap(staged: ModelPaths, layer: str) -> int:
    """Bytes the activations .npy may have: N × D float32 per its (already staged) sidecar, plus a header."""
    try:
        sidecar = read_sidecar(staged, layer)
        n, d = int(sidecar["N"]), int(sidecar["D"])
    except (DataLayoutError, KeyError, TypeError, ValueError) as exc:
        raise DataLayoutError(f"the sidecar of {layer!r} does not say the activations' size ({exc})") from None
    if n < 1 or d < 1:
        raise DataLayoutError(f"the sidecar of {layer!r} announces ({n}, {d}) activations")
    return min(n * d * 4 + _NPY_HEADER_MAX, MAX_OBJECT_BYTES[".npy"])


def _check_finite(staged: ModelPaths, layer: str) -> None:
    """Every activation is a finite number (read in blocks, never all at once)."""
    try:
        acts = np.load(staged.activations(layer), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataLayoutError(f"activations of {layer!r} are truncated or corrupt: {exc}") from None
    if acts.ndim != 2:
        return  # the shape check of the validation below names the problem
    step = max(1, (64 << 20) // max(1, acts.shape[1] * acts.dtype.itemsize))
    for start in range(0, acts.shape[0], step):
        block = np.asarray(acts[start:start + step])
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise DataLayoutError(f"activations of {layer!r} hold NaN or infinite values (first in row {row}); "
                                  "refusing them")


def _validate_layer(staged: ModelPaths, layer: str, local: ModelPaths, require_map: bool) -> None:
    """Check a layer's files under ``staged`` against each other and against the local data
    folder ``local`` (its samples and build parameters, when it has them)."""
    check_layer_files(staged, layer, _local_source(local), require_map=require_map)


def _local_source(local: ModelPaths) -> dict | None:
    """``layers.layer_source`` of a data folder; None when it has no config, metadata or checkpoint."""
    try:
        return layer_source(local, load_config(local), load_metadata(local))
    except DataLayoutError:
        return None


def _check_source(sidecar: dict, local: ModelPaths, layer: str) -> None:
    """The activations were built from the same samples, noise levels, seed and checkpoint
    as this data folder (skipped when the folder has no config, metadata or checkpoint)."""
    expected = _local_source(local)
    differ = [] if expected is None else source_mismatch(sidecar, expected)
    if differ:
        raise DataLayoutError(f"activations of {layer!r} were built with different {', '.join(differ)} than "
                              f"{local.root} (e.g. {differ[0]}={sidecar.get(differ[0])!r}, expected "
                              f"{expected[differ[0]]!r})")


def _put(client, bucket: str, artefact: _Artefact) -> None:
    if artefact.path.suffix not in PORTABLE_SUFFIXES:
        raise ValueError(f"refusing to upload {artefact.path}: only {', '.join(PORTABLE_SUFFIXES)} files go to "
                         "the bucket")
    digest = hashlib.sha256()
    with open(artefact.path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    content_type = {".npy": "application/octet-stream", ".csv": "text/csv", ".json": "application/json"}
    with open(artefact.path, "rb") as fh:
        client.put_object(Bucket=bucket, Key=artefact.key, Body=fh, ContentType=content_type[artefact.path.suffix],
                          Metadata={_SHA_KEY: digest.hexdigest()})


def _head_size(client, bucket: str, key: str) -> int:
    from botocore.exceptions import ClientError

    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            raise CacheMiss(f"no object {key}") from None
        raise


def _error_code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _is_connection_error(exc: Exception) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    return isinstance(exc, (BotoConnectionError, ConnectTimeoutError, ReadTimeoutError))


def _budget_bytes(max_local_mb: float | None) -> int | None:
    source = "max_local_mb"
    if max_local_mb is None:
        raw = os.environ.get(BUDGET_ENV, "").strip()
        if not raw:
            return None
        source = BUDGET_ENV
        try:
            max_local_mb = float(raw)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV}={raw!r} is not a number; give the layer-cache budget in MB "
                             f"(> 0), or unset it for no budget") from None
    if not max_local_mb > 0:
        raise ValueError(f"{source}={max_local_mb!r}: the layer-cache budget must be > 0 MB")
    return int(max_local_mb * 2**20)


def seed_layer(cache: LayerCache, model: str, layer: str, device: str = "cpu", dry_run: bool = False) -> str:
    """Make sure the bucket holds ``layer`` of ``model``: "present" when it already does
    (valid), else build it locally when needed (extract + fit, skipped when already on disk)
    and upload: "uploaded" or "failed"; with ``dry_run`` nothing is built or sent: "missing"."""
    if cache.in_bucket(model, layer):
        return "present"
    if dry_run:
        return "missing"
    from .build import build_layer

    build_layer(cache.data_dir, model, layer, device=device, progress=False)
    return "uploaded" if cache.upload_layer(model, layer, background=False) else "failed"
