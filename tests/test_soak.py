"""The 30-second soak: well-behaved and abusive visitors against a real app process.

``diffviews soak`` runs the same thing for 5 minutes with 8 sessions (README's figures).
"""

from __future__ import annotations

import pytest

from diffviews.bench.soak import SoakOptions, markdown, run_soak

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(app_data_dir):
    return run_soak(SoakOptions(app_data_dir, sessions=3, duration=30.0, abusive=1, seed=1))


def test_well_behaved_sessions_see_no_errors_and_only_their_own_state(report):
    print(markdown(report))
    assert report["app_alive_at_end"]
    assert report["errors"] == 0, report["error_examples"]
    assert report["cross_session_effects"] == 0, report["cross_examples"]
    assert {"hover", "click", "generate"} <= set(report["requests"])


def test_abusive_visitors_are_refused(report):
    abuse = report["abuse"]
    assert "accepted" not in abuse.get("rest_bypass", {}), abuse
    assert "accepted" not in abuse.get("oversized_upload", {}), abuse
    flood = abuse.get("queue_flood", {})
    assert flood.get("ran", 0) < sum(flood.values()), f"every flooded job ran: {flood}"


def test_temp_files_stay_bounded(report):
    grown = report["disk"]["end"]["tmp_bytes"] - report["disk"]["start"]["tmp_bytes"]
    assert grown < 64 * 1024 * 1024, f"the app's temp files grew by {grown / 2**20:.1f} MiB in 30 s"


def test_stopping_the_app_removes_its_exports(report):
    """Hosts stop the app with SIGTERM; its export folder (the warm-up exports) must not outlive it."""
    assert report["disk"]["after_stop"]["export_folders"] == 0, report["disk"]
