"""CI must run the real-data checks: fail (not skip) there when ../shared/data is missing."""
import os

import pytest

from tests.conftest import SHARED_DATA


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only enforced in CI")
def test_shared_data_present_in_ci() -> None:
    assert (SHARED_DATA / "dailydialog" / "train.zip").is_file(), f"CI has no shared data at {SHARED_DATA}"
