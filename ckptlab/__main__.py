"""``python -m ckptlab``: see :mod:`ckptlab.cli`."""

from .cli import main_exit

main_exit()
