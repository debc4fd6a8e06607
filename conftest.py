"""Repository-wide pytest setup (tests/ and the lesson notebooks run by nbval).

Quizzes shuffle their choices, and lesson 5 draws its mystery, from the learner's session seed;
under pytest that seed is fixed so every run sees the same lessons (override with
CKPTLAB_QUIZ_SEED=N).
"""

import os

os.environ.setdefault("CKPTLAB_QUIZ_SEED", "0")
