"""Shared fixtures for the training tests: one token cache for the whole session."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
    """Tokenize pystdlib once per session into a temporary cache (never ~/.cache in tests)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(tmp_path_factory.mktemp("token_cache")))
    yield
    mp.undo()
