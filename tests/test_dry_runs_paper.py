"""Dry runs of the paper and paper-12b profiles: each whole chain offline on random weights, as a user runs it
(``python -m streamlib run --profile paper --dry-run``); a file of their own so that ``make test``'s two processes
share the dry runs out (tests/test_dry_runs.py has the cpu and long profiles')."""

import pytest

from conftest import check_dry_run


@pytest.mark.parametrize("profile", ["paper", "paper-12b"])
def test_dry_run_of_a_paper_profile_runs_offline(profile, tmp_path):
    check_dry_run(profile, tmp_path)
