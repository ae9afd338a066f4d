"""Kept while older test modules import from here: the helpers live in helpers.py."""
from helpers import TINY, StopAfter, assert_user_error, notes, snapshot, temp_files  # noqa: F401
