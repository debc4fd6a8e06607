"""The command line, ``python -m ckptlab`` and the ``ckptlab`` console script.

Its modules, one line each, are in the module map of docs/architecture.md (the one list;
``tests/test_module_map.py`` keeps it true).
"""

from .commands import describe_checkpoint
from .main import main, main_exit
from .parser import build_parser

__all__ = ["build_parser", "describe_checkpoint", "main", "main_exit"]
