"""Images written to Gradio's file cache once, atomically.

Gradio saves each image an event returns under a folder named by a hash of its bytes, with a
plain write (``processing_utils.save_pil_to_cache``). Two sessions that get the same image at
once (a popular point's preview) both rewrite that file: one truncates it while the other's
client downloads it, and the download ends short (seen in the soak: "peer closed connection
without sending complete message body (received 0 bytes, expected 1595)"). ``install`` swaps
in ``save_pil_once``: the bytes go to a temporary file renamed into place, and a file already
there is reused (touched, so Gradio's age-based cleanup keeps it, as its own file cache does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradio import processing_utils


def save_pil_once(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """``processing_utils.save_pil_to_cache`` with an atomic, write-once file."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if path.exists():
        try:
            os.utime(path)
        except OSError:  # removed meanwhile by the cleanup: written again below
            pass
        else:
            return str(path)
    fd, part = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return str(path)


def install() -> None:
    """Route every image Gradio caches (``gr.Image``, ``gr.Gallery``, arrays and PIL images)
    through ``save_pil_once`` (idempotent)."""
    processing_utils.save_pil_to_cache = save_pil_once
