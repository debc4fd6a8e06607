"""The lab: what the lesson notebooks use beside the package itself.

Needs the ``lab`` extra (JupyterLab, ipywidgets, matplotlib, nbval, papermill; in a clone of
ckptlab's repository, ``pip install -c requirements.txt ".[lab]"``). The notebooks teach; these
modules do the work, so every figure, table and check in a lesson is a tested function.

Its modules, one line each, are in the module map of docs/architecture.md (the one list;
``tests/test_module_map.py`` keeps it true).
"""
