"""Get Plotly's code ready while Gradio's page is still starting.

Gradio's page reaches ``gr.Plot``'s Plotly bundle (``assets/PlotlyPlot-<hash>.js``, 4.6 MB)
only at the end of its chain of module imports (the config, the layout, every component's
chunk, then the Plot component, which imports Plotly: about 1 s after the page starts on a
2-core machine), and then evaluates it on the page's main thread (0.7-1 s, most of it V8
compiling Plotly's functions one by one as they are first called). Tags given to
``gr.Blocks(head=...)`` cannot start it sooner: Gradio adds them from JavaScript once it runs.

``PreloadPlotly`` is an ASGI middleware inside Gradio's app that

- writes ``<link rel="modulepreload">`` for that bundle into every HTML page's ``<head>`` as
  the server sends it, so the browser fetches and compiles it while Gradio's own modules load;
- serves the bundle (Gradio's file, unchanged) behind V8's compile-hint comment
  ``//# allFunctionsCalledOnLoad``, so Chromium compiles all of it eagerly on a background
  thread while streaming it, instead of lazily on the main thread during evaluation (other
  browsers ignore the comment).

The bundle is found among the Gradio build's static files at start-up (``plotly_chunk``),
never named by a hash written here; without exactly one such file the middleware does
nothing. Every host passes it the same way: ``app_kwargs`` of ``launch`` /
``mount_gradio_app`` (``preload_app_kwargs``, through ``app.serve_options``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import gradio
from starlette.middleware import Middleware

__all__ = ["PreloadPlotly", "plotly_chunk", "preload_tag", "preload_app_kwargs", "COMPILE_HINT"]

#: where Gradio's built frontend keeps its JavaScript chunks (served at ``<root>/assets/``)
ASSETS = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
CHUNK_GLOB = "PlotlyPlot-*.js"
#: V8's explicit compile hint for a whole script; it must be the script's first line
COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"


@cache
def plotly_chunk(assets: Path = ASSETS) -> str | None:
    """The file name of Gradio's Plotly chunk in ``assets`` (None when the build has none or
    several: then nothing is changed)."""
    found = sorted(p.name for p in assets.glob(CHUNK_GLOB))
    return found[0] if len(found) == 1 else None


def preload_tag(chunk: str) -> bytes:
    """The tag written after ``<head>``: relative to the page's ``<base>``, as Gradio's own script
    tags are, and with the same ``crossorigin`` mode as Gradio's import, so the import reuses it."""
    return f'<link rel="modulepreload" crossorigin href="./assets/{chunk}">'.encode()


def _inject(page: bytes, tag: bytes) -> bytes:
    """``page`` with ``tag`` after its first ``<head>`` (unchanged when it has none)."""
    at = page.find(b"<head>")
    return page if at < 0 else page[:at + 6] + tag + page[at + 6:]


def _with_length(start: dict, length: int) -> dict:
    headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(length).encode())]}


class PreloadPlotly:
    """ASGI middleware: HTML pages get ``preload_tag(chunk)`` after ``<head>``; ``assets/<chunk>``
    is sent after ``COMPILE_HINT``. Anything compressed, partial or not 200 passes unchanged."""

    def __init__(self, app, chunk: str | None = None):
        self.app = app
        self.chunk = chunk
        self.tag = preload_tag(chunk) if chunk else b""

    async def __call__(self, scope, receive, send):
        if not self.chunk or scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        is_chunk = scope.get("path", "").endswith("/assets/" + self.chunk)
        start: dict | None = None
        body: list[bytes] = []
        hinted = False

        async def send_changed(message):
            nonlocal start, hinted
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers") or []}
                plain = message.get("status") == 200 and b"content-encoding" not in headers
                if plain and is_chunk and b"content-length" in headers:
                    message = _with_length(message, int(headers[b"content-length"]) + len(COMPILE_HINT))
                    hinted = True
                elif plain and headers.get(b"content-type", b"").startswith(b"text/html"):
                    start = message  # held until the whole page is here
                    return
                await send(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            if hinted:
                hinted = False
                message = {**message, "body": COMPILE_HINT + message.get("body", b"")}
            if start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = _inject(b"".join(body), self.tag)
            await send(_with_length(start, len(page)))
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_changed)


def preload_app_kwargs() -> dict:
    """``app_kwargs`` for Gradio's ``launch`` / ``mount_gradio_app``: its app with ``PreloadPlotly``."""
    return {"middleware": [Middleware(PreloadPlotly, chunk=plotly_chunk())]}
