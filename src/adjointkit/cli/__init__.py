"""The `adjointkit` command line."""

from ._main import main as main
