"""The package version, in one place: recorded in every manifest and shown by ``--version``.

It lives in the engine (the bottom floor) so that nothing in the engine imports from above it;
``ckptlab.__version__`` re-exports it and the build reads it from here (pyproject.toml).
"""

__version__ = "0.4.0"
