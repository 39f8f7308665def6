"""Concurrent events of one session (``visualization/session_merge.py``): a slow handler's
state lands on the latest state instead of undoing what a faster event did meanwhile."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from diffviews.backends.local import LocalBackend
from diffviews.visualization import callbacks as cb
from diffviews.visualization.app import _handler
from diffviews.visualization.events import ENDPOINT_OUTPUTS
from diffviews.visualization.session_merge import SessionBoard, merge
from diffviews.visualization.visualizer import GradioVisualizer

S0 = cb.Session(model="digits", layer="mid", selected=3, knn=(4, 5), knn_dist=(0.1, 0.2), generations=("g1",),
                sid="s")


def test_a_click_during_a_generation_keeps_both():
    clicked = replace(S0, selected=9, knn=(), knn_dist=())
    generated = replace(S0, generations=("g1", "g2"), active="g2", frame=0)
    state = merge(S0, generated, latest=clicked)
    assert (state.selected, state.knn, state.generations, state.active) == (9, (), ("g1", "g2"), "g2")


def test_generations_merge_as_sets():
    first = replace(S0, generations=("g1", "g2"))
    second = replace(S0, generations=("g1", "g3"))
    assert merge(S0, second, latest=first).generations == ("g1", "g2", "g3")
    cleared = replace(S0, generations=())
    assert merge(S0, cleared, latest=first).generations == ("g2",)  # what the clear saw is gone, g2 stays


def test_a_model_switch_decides_every_point_of_the_model():
    clicked = replace(S0, selected=9, manual=(1, 2))
    switched = replace(S0, model="shapes", layer="mid", selected=None, manual=(), knn=(), knn_dist=(), frame=None)
    state = merge(S0, switched, latest=clicked)
    assert (state.model, state.selected, state.manual, state.knn) == ("shapes", None, (), ())


def test_board_without_concurrency_stores_what_the_handler_returned():
    board = SessionBoard(max_sessions=2)
    s1 = replace(S0, selected=1)
    assert board.commit("s", S0, s1) is s1
    s2 = replace(s1, selected=2)
    assert board.commit("s", s1, s2) is s2
    assert board.commit(None, S0, s1) is s1  # no session id: nothing to merge with
    for sid in ("a", "b", "c"):
        board.commit(sid, S0, s1)
    assert len(board) == 2  # bounded
    board.forget("c")
    assert len(board) == 1
    with pytest.raises(ValueError, match="max_sessions"):
        SessionBoard(max_sessions=0)


@pytest.fixture(scope="module")
def vis(tiny_data_dir):
    return GradioVisualizer(tiny_data_dir, backend=LocalBackend(tiny_data_dir, device="cpu"), default_model="digits")


def test_app_handlers_click_then_slow_generation_finishing(vis):
    """Both handlers start from the same state (Gradio gives each the state of its start); the
    click finishes first, the generation last: the session keeps the click and the generation."""
    board, request = SessionBoard(), SimpleNamespace(session_hash="visitor")
    select = _handler(vis, cb.select_point, ENDPOINT_OUTPUTS["select_point"], board)
    generate = _handler(vis, cb.generate, ENDPOINT_OUTPUTS["generate"], board)
    start, _ = cb.select_point(vis, replace(cb.initial_session(vis), sid="visitor"), 0)
    clicked = select(start, 7, False, request)[0]
    generated = generate(start, "From selected point", 3, 1, 1.0, 2.0, 80.0, 0.0, "fixed", 0, 1, None, request)[0]
    assert clicked.selected == 7
    assert generated.selected == 7, "the generation finishing undid the click made meanwhile"
    assert len(generated.generations) == 1 and generated.active == generated.generations[0]
