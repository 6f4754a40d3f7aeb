import sys
from pathlib import Path

# tests/ holds shared helpers (tolerances.py); make them importable under importlib mode.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    """The oracle's golden cases, exported once per session (tests only read them)."""
    from slimgpt import oracle

    d = tmp_path_factory.mktemp("golden")
    oracle.export(d)
    return d
