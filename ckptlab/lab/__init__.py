"""The lab: what the lesson notebooks use beside the package itself.

Needs the ``lab`` extra (``pip install "ckptlab[lab]"``: JupyterLab, ipywidgets, matplotlib,
nbval, papermill). The notebooks teach; these modules do the work, so every figure, table and
check in a lesson is a tested function.

Modules:
    lessons        tables, plots and the pipeline diagram the lessons show
    quiz           question banks (``quizzes/*.json``, package data), grading, the quiz widget
    exercises      automatic checks of the learners' answers
    ablation       resume with some components left out, and where the runs separate
    retention_lab  replay a save and retention strategy over a recorded run
    failures       damage a checkpoint on purpose (flipped bytes, a planted pickle)
    practice       the package's features in use: pointers, lineage, async saves, partial
                   loads, export, the catalog, ranking, your own loop, how often to save,
                   rollbacks and branches, the command line run in process
    predict        predict, then run: questions a live control asks before its run
    determinism    when a resume can be bit-exact; deterministic kernels on a GPU
"""
