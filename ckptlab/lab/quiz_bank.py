"""The lessons' question banks: ``quizzes/<lesson>.json`` (package data, schema in
``quizzes/schema.json``) read and checked into :class:`Quiz` objects.

Kept apart from :mod:`.quiz` (grading and the widget) so that :mod:`.progress` can read the
banks while the quiz records answers into the progress file, with no import circle.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..engine import CkptlabError

# Package data: shipped inside the wheel, so the quizzes work from any install.
QUIZ_DIR = Path(__file__).resolve().parent / "quizzes"

# Words that change nothing in a short answer naming a thing or a number.
_FILLER = frozenset("the a an its their this that of piece component state exactly just only "
                    "it is was be".split())


def answer_words(text: str) -> list[str]:
    """The words of a short answer, lower case (2,000 -> 2000, Adam's -> adam)."""
    text = re.sub(r"(?<=\d)[,_](?=\d)", "", text.lower())   # 2,000 and 2_000 are 2000
    text = re.sub(r"['\u2019]s\b", "", text)                  # Adam's -> Adam
    return re.findall(r"[a-z0-9]+(?:\.[a-z0-9]+)*", text)


def singular(word: str) -> str:
    """A crude singular: counters -> counter, metrics -> metric (not progress, not 500s)."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") \
        and not word[:-1].isdigit() else word


def normalise_name(text: str) -> str:
    """A short answer reduced to what it names: lower case, no punctuation, quotes or
    articles, no filler words, plurals made singular. ``"The counters."``,
    ``"counter"`` and ``"`counters`"`` all become ``"counter"``."""
    return " ".join(singular(w) for w in answer_words(text) if w not in _FILLER)


class QuizError(CkptlabError):
    """A malformed question bank, or an answer that cannot be graded."""


@dataclass(frozen=True)
class Choice:
    text: str
    correct: bool
    explanation: str


@dataclass(frozen=True)
class Idea:
    """One idea a typed answer must contain: ``name`` (shown once the answer is revealed) and
    the ``phrasings`` that count as saying it (any one is enough)."""

    name: str
    phrasings: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    """One question. ``choices`` is empty for ``recall``; ``model_answer``, ``accept`` and
    ``ideas`` are used by ``recall`` only (at most one of ``accept`` and ``ideas``)."""

    id: str
    prompt: str
    kind: Literal["single", "multiple", "recall"]
    choices: tuple[Choice, ...] = ()
    model_answer: str = ""
    accept: tuple[str | float, ...] = ()
    ideas: tuple[Idea, ...] = ()
    section: str = ""    # the lesson heading that teaches it (the progress map links there)

    @property
    def correct_indices(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.choices) if c.correct)

    @property
    def scored(self) -> bool:
        """Counts in the graded score: every recognition question, and recall that is checked
        by ``accept`` or ``ideas``."""
        return self.kind != "recall" or bool(self.accept) or bool(self.ideas)

    @property
    def self_checked(self) -> bool:
        """A recall question the learner checks against the model answer themselves."""
        return self.kind == "recall" and not self.scored


@dataclass(frozen=True)
class Quiz:
    title: str
    questions: tuple[Question, ...]


def _parse_question(q: Any, source: str, n: int) -> Question:
    try:
        kind = q["kind"]
        if kind == "recall":
            accept = tuple(a if isinstance(a, (int, float)) and not isinstance(a, bool)
                           else str(a) for a in q.get("accept", []))
            ideas = tuple(Idea(str(i["idea"]), tuple(str(p) for p in i["any"]))
                          for i in q.get("ideas", []))
            return Question(str(q["id"]), str(q["prompt"]), kind,
                            model_answer=str(q["model_answer"]), accept=accept, ideas=ideas,
                            section=str(q.get("section", "")))
        choices = tuple(Choice(str(c["text"]), bool(c["correct"]), str(c["explanation"]))
                        for c in q["choices"])
        return Question(str(q["id"]), str(q["prompt"]), kind, choices,
                        section=str(q.get("section", "")))
    except (KeyError, TypeError) as exc:
        raise QuizError(f"{source}: question {n} is missing {exc}") from None


def _parse(data: Any, source: str) -> Quiz:
    """Build a :class:`Quiz` from decoded JSON, checking what the schema cannot."""
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise QuizError(f"{source}: expected an object with a 'questions' list")
    questions, ids = [], set()
    for n, q in enumerate(data["questions"], start=1):
        question = _parse_question(q, source, n)
        if question.kind not in ("single", "multiple", "recall"):
            raise QuizError(f"{source}: question {question.id!r} has kind {question.kind!r}")
        if question.id in ids:
            raise QuizError(f"{source}: duplicate question id {question.id!r}")
        ids.add(question.id)
        if question.kind == "recall":
            if not question.model_answer.strip():
                raise QuizError(f"{source}: recall question {question.id!r} needs a "
                                "model_answer")
            if question.accept and question.ideas:
                raise QuizError(f"{source}: recall question {question.id!r} has both accept "
                                "and ideas; give one (or neither, to self-check)")
            if any(not idea.phrasings or not all(normalise_name(p) for p in idea.phrasings)
                   for idea in question.ideas):
                raise QuizError(f"{source}: every idea of {question.id!r} needs phrasings")
            questions.append(question)
            continue
        n_correct = len(question.correct_indices)
        if (len(question.choices) < 2 or n_correct == 0
                or (question.kind == "single" and n_correct != 1)):
            raise QuizError(f"{source}: question {question.id!r} needs >= 2 choices and "
                            f"{'exactly one' if question.kind == 'single' else 'at least one'}"
                            " correct choice")
        if any(not c.explanation.strip() for c in question.choices):
            raise QuizError(f"{source}: every choice of {question.id!r} needs an explanation")
        questions.append(question)
    return Quiz(str(data.get("title", source)), tuple(questions))


def load_quiz(name: str | os.PathLike[str]) -> Quiz:
    """Load a question bank by lesson name (``"01_pipeline_trace"``) or path."""
    path = Path(name)
    if not path.suffix:
        path = QUIZ_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise QuizError(f"no question bank at {path}") from None
    except json.JSONDecodeError as exc:
        raise QuizError(f"{path} is not valid JSON: {exc}") from None
    return _parse(data, path.name)
