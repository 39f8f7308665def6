"""The page preloads Gradio's Plotly chunk and serves it behind V8's compile hint (``preload.py``)."""

import asyncio
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from diffviews.visualization.preload import ASSETS, COMPILE_HINT, PreloadPlotly, plotly_chunk, preload_tag

PRELOAD = re.compile(rb'<link rel="modulepreload" crossorigin href="\./assets/([^"]+)">')


def _get(url: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "identity"})) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def test_the_page_preloads_a_chunk_the_server_serves_with_the_hint(running_app):
    status, _, page = _get(running_app.url)
    assert status == 200
    head = page[:page.index(b"</head>")]
    found = PRELOAD.findall(head)
    assert found == [plotly_chunk().encode()]
    assert head.index(b"modulepreload") < head.index(b"window.gradio_config")  # before the config, not after it
    status, headers, chunk = _get(running_app.url + "assets/" + found[0].decode())
    assert status == 200 and headers["content-type"].startswith(("text/javascript", "application/javascript"))
    original = (ASSETS / found[0].decode()).read_bytes()
    assert chunk == COMPILE_HINT + original and int(headers["content-length"]) == len(chunk)
    assert b"window.Plotly" in original  # the file really is Plotly's bundle


def test_the_chunk_is_found_in_gradios_build_and_named_once():
    chunk = plotly_chunk()
    assert chunk and re.fullmatch(r"PlotlyPlot-[\w-]+\.js", chunk) and (ASSETS / chunk).is_file()
    assert preload_tag(chunk).count(chunk.encode()) == 1


def _serve(app, path: str) -> tuple[list[dict], bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path}
    request = PreloadPlotly(app, chunk="PlotlyPlot-x.js")(scope, receive, send)
    with ThreadPoolExecutor(1) as pool:  # a loop of its own: another test's client may run one in this thread
        pool.submit(asyncio.run, request).result()
    return sent, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _app(status: int, headers: list, parts: list[bytes]):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    return app


def test_a_page_sent_in_parts_gets_the_tag_and_a_matching_length():
    html = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"33")]
    sent, body = _serve(_app(200, html, [b"<html><he", b"ad><title>x</title></head></html>"]), "/")
    assert body == b"<html><head>" + preload_tag("PlotlyPlot-x.js") + b"<title>x</title></head></html>"
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()


@pytest.mark.parametrize("status,headers,path", [
    (200, [(b"content-type", b"text/html"), (b"content-encoding", b"br")], "/"),  # compressed: left alone
    (404, [(b"content-type", b"text/html")], "/"),
    (200, [(b"content-type", b"application/json")], "/config"),
    (206, [(b"content-type", b"text/javascript"), (b"content-length", b"4")], "/assets/PlotlyPlot-x.js"),
])
def test_other_responses_pass_unchanged(status, headers, path):
    sent, body = _serve(_app(status, headers, [b"<head>", b"body"]), path)
    assert body == b"<head>body" and sent[0]["headers"] == headers


def test_the_chunk_gets_the_hint_first_and_its_length_grows():
    js = [(b"content-type", b"text/javascript"), (b"content-length", b"8")]
    sent, body = _serve(_app(200, js, [b"var a=1;"]), "/gradio/assets/PlotlyPlot-x.js")
    assert body == COMPILE_HINT + b"var a=1;"
    assert dict(sent[0]["headers"])[b"content-length"] == str(8 + len(COMPILE_HINT)).encode()
