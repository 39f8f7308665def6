"""Cached images are written once and atomically (``visualization.gradio_cache``)."""

from __future__ import annotations

import os
import threading

import numpy as np
from gradio import processing_utils

from diffviews.visualization import gradio_cache


def test_gradios_own_image_saving_writes_each_image_once(tmp_path):
    gradio_cache.install()
    img = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    first = processing_utils.save_img_array_to_cache(img, str(tmp_path))  # Gradio's caller, through the swap
    inode = os.stat(first).st_ino
    again = processing_utils.save_img_array_to_cache(img, str(tmp_path))
    assert again == first and os.stat(again).st_ino == inode  # reused, not rewritten
    assert not [p for p in tmp_path.rglob(".part-*")]


def test_a_reader_never_sees_a_short_file_while_others_save_the_same_image(tmp_path):
    gradio_cache.install()
    img = np.random.default_rng(1).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    path = processing_utils.save_img_array_to_cache(img, str(tmp_path))
    size = os.path.getsize(path)
    stop, short = threading.Event(), []

    def writer():
        while not stop.is_set():
            processing_utils.save_img_array_to_cache(img, str(tmp_path))

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            with open(path, "rb") as fh:
                if len(fh.read()) != size:
                    short.append(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not short
