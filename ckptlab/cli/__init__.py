"""The command line, ``python -m ckptlab`` and the ``ckptlab`` console script."""

from .main import build_parser, describe_checkpoint, main, main_exit

__all__ = ["build_parser", "describe_checkpoint", "main", "main_exit"]
