"""Quiz engine: banks validated against the schema and balanced (no position, no length, no
justification clause or absolute word tells the answer), seeded shuffles, first-attempt scoring,
feedback that withholds the answer until a second attempt or "Show answer", recall questions
graded fairly (equivalents, required ideas, self-checks; never whole-string equality), and the
static view."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from ckptlab.lab.quiz import (
    QUIZ_DIR,
    Idea,
    Question,
    Quiz,
    QuizError,
    QuizWidget,
    choice_order,
    grade,
    grade_recall,
    load_quiz,
    quiz_static_html,
    session_seed,
)

# Every bank in the package, including lessons added later (09_*, 10_*, ...).
BANKS = sorted(p for p in QUIZ_DIR.glob("*.json") if p.name != "schema.json")
CLOSING_REVIEW = "12_closing_review"   # the cumulative review at the end of the path
SCHEMA = json.loads((QUIZ_DIR / "schema.json").read_text())
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def choice_questions():
    for bank in BANKS:
        for q in load_quiz(bank).questions:
            if q.kind != "recall":
                yield bank.stem, q


def test_there_is_a_bank_per_lesson_notebook():
    notebooks = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                       if not p.stem.startswith("00_"))
    assert notebooks and set(notebooks) <= {b.stem for b in BANKS}


@pytest.mark.parametrize("bank", BANKS, ids=lambda p: p.stem)
def test_bank_matches_schema_and_rules(bank):
    data = json.loads(bank.read_text())
    jsonschema.validate(data, SCHEMA)
    quiz = load_quiz(bank)  # the semantic rules the schema cannot express
    recall = [q for q in quiz.questions if q.kind == "recall"]
    if bank.stem == CLOSING_REVIEW:  # weighted to scenarios and recall, about 15 questions
        assert 3 <= len(recall) and 12 <= len(quiz.questions) <= 18, len(quiz.questions)
    else:
        assert 1 <= len(recall) <= 2, f"{bank.stem}: {len(recall)} recall questions, want 1-2"
    assert len(quiz.questions) - len(recall) >= 3
    for q in quiz.questions:
        for c in q.choices:  # an explanation says why, not just "Yes (lesson 1)."
            assert len(c.explanation.split()) >= 6, (bank.stem, q.id, c.explanation)


def test_schema_knows_the_recall_kind_and_rejects_bad_questions():
    recall = {"id": "r", "prompt": "How many?", "kind": "recall",
              "model_answer": "Four: the three best and the latest.", "accept": [4, "four"]}
    choice = {"id": "a", "prompt": "Prompt?", "kind": "single",
              "choices": [{"text": "x", "correct": True,
                           "explanation": "because this is the reason it is right"},
                          {"text": "y", "correct": False,
                           "explanation": "because this is the reason it is wrong"}]}
    jsonschema.validate({"title": "t", "questions": [choice, {**choice, "id": "b"}, recall]},
                        SCHEMA)
    ideas = {**{k: v for k, v in recall.items() if k != "accept"},
             "ideas": [{"idea": "the reason", "any": ["because", "since"]}]}
    jsonschema.validate({"title": "t", "questions": [choice, {**choice, "id": "b"}, ideas]},
                        SCHEMA)
    for bad in ({**recall, "model_answer": ""}, {**recall, "accept": [True]},
                {**recall, "choices": []}, {**choice, "kind": "recall"},
                {**choice, "choices": [{"text": "x", "correct": True}]},
                {**ideas, "accept": [4]}, {**ideas, "ideas": [{"idea": "x y z", "any": []}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"title": "t", "questions": [choice, choice, bad]}, SCHEMA)


def test_banks_are_balanced_across_the_suite():
    """A guesser gains nothing: no position holds more than 40% of the correct answers of the
    single-choice questions, the longest (or shortest) choice is correct in at most 40% of the
    questions, and 'tick all but the last' (or 'tick all') wins at most 40% of multiple ones."""
    positions, longest, shortest, singles, n = Counter(), 0, 0, 0, 0
    all_but_last = tick_all = multiples = 0
    for _, q in choice_questions():
        n += 1
        lengths = [len(c.text) for c in q.choices]
        longest += q.choices[lengths.index(max(lengths))].correct
        if q.kind == "single":
            singles += 1
            positions[next(iter(q.correct_indices))] += 1
            shortest += q.choices[lengths.index(min(lengths))].correct
        else:
            multiples += 1
            last = len(q.choices) - 1
            all_but_last += q.correct_indices == frozenset(range(last))
            tick_all += q.correct_indices == frozenset(range(last + 1))
    print(f"positions {dict(positions)} of {singles}; longest correct {longest}/{n}; "
          f"shortest correct {shortest}/{singles}; all-but-last {all_but_last}/{multiples}")
    assert max(positions.values()) <= 0.40 * singles, positions
    assert longest <= 0.40 * n, f"the longest choice is correct in {longest} of {n}"
    assert shortest <= 0.40 * singles, f"the shortest choice is correct in {shortest}"
    assert all_but_last <= 0.40 * multiples and tick_all <= 0.40 * multiples


# A justification clause or an absolute word in a choice: test-takers learn that these mark
# distractors. Measured on the choice text (explanations may say anything).
CLAUSE = re.compile(r"\bbecause\b|\bsince\b|\bso that\b|,\s*so\b|:\s|\s[\u2014\u2013]\s|\s-\s|;"
                    r"|\bas it\b|\bwhich\b", re.I)
ABSOLUTE = re.compile(r"\b(never|always|every|all|any|only|none|nothing|cannot|can't|must|"
                      r"entire(ly)?|whole|completely|guarantee[sd]?|impossible)\b", re.I)


def cued(text):
    return bool(CLAUSE.search(text) or ABSOLUTE.search(text))


def test_skipping_choices_with_a_clause_or_an_absolute_does_not_beat_chance():
    """A test-taker who rules out every choice with a justification clause ("because ...",
    "X: ...") or an absolute ("never", "always") and guesses among the rest must not score
    better than one who guesses blindly; and clauses and absolutes must not be much more
    frequent in distractors than in correct choices."""
    cue_strategy = chance = 0.0
    cued_wrong = cued_right = wrong = right = 0
    for _, q in choice_questions():
        for c in q.choices:
            if c.correct:
                right += 1
                cued_right += cued(c.text)
            else:
                wrong += 1
                cued_wrong += cued(c.text)
        plain = [c for c in q.choices if not cued(c.text)] or list(q.choices)
        if q.kind == "single":   # a uniform guess among the plain choices
            cue_strategy += sum(c.correct for c in plain) / len(plain)
            chance += 1 / len(q.choices)
        else:                    # tick exactly the plain choices
            cue_strategy += {i for i, c in enumerate(q.choices) if c in plain} == \
                set(q.correct_indices)
            chance += 1 / (2 ** len(q.choices) - 1)
    print(f"cue strategy {cue_strategy:.2f} vs chance {chance:.2f}; cued distractors "
          f"{cued_wrong}/{wrong}, cued correct choices {cued_right}/{right}")
    assert cue_strategy <= chance, (cue_strategy, chance)
    assert cued_wrong / wrong <= cued_right / right + 0.10


def test_multiple_choice_questions_vary_how_many_choices_are_right():
    """Not "all but one": the number of correct choices varies, and questions with exactly one
    wrong choice are a minority."""
    multiples = [q for _, q in choice_questions() if q.kind == "multiple"]
    correct_counts = Counter(len(q.correct_indices) for q in multiples)
    one_wrong = sum(len(q.choices) - len(q.correct_indices) == 1 for q in multiples)
    assert len(correct_counts) >= 3, correct_counts
    assert one_wrong <= 0.4 * len(multiples), (one_wrong, len(multiples))


def test_recall_asks_for_reasons_and_causes_not_file_names():
    """No recall question asks which file something is in (trivia), and prose answers are
    graded by ideas or self-checked, never by one exact keyword."""
    for bank in BANKS:
        for q in load_quiz(bank).questions:
            if q.kind != "recall":
                continue
            assert "(a file name)" not in q.prompt and "Which file" not in q.prompt, q.id
            if "own words" in q.prompt or "sentence" in q.prompt:
                assert not q.accept, (bank.stem, q.id)


def test_the_closing_review_is_the_last_bank_and_spans_the_lessons():
    """The start page and the README say the closing review covers every lesson: its
    explanations and model answers send the learner back to each lesson before it (1-11)."""
    stems = [b.stem for b in BANKS]
    assert stems[-1] == CLOSING_REVIEW, stems
    review = load_quiz(CLOSING_REVIEW)
    texts = [c.explanation for q in review.questions for c in q.choices]
    texts += [q.model_answer for q in review.questions if q.kind == "recall"]
    cited = {int(n) for text in texts
             for group in re.findall(r"lessons? (\d+(?:(?:, | and )\d+)*)", text)
             for n in re.findall(r"\d+", group)}
    lessons = {int(stem[:2]) for stem in stems if stem != CLOSING_REVIEW}
    assert lessons == set(range(1, 12)), lessons
    assert not lessons - cited, f"no question of the closing review on lessons " \
                                f"{sorted(lessons - cited)}"


def test_no_two_lessons_open_with_the_same_question():
    openers = [load_quiz(b).questions[0].prompt for b in BANKS]
    assert len(set(openers)) == len(openers), Counter(openers).most_common(2)
    ids = [(b.stem, q.id) for b in BANKS for q in load_quiz(b).questions]
    prompts = Counter(q.prompt for b in BANKS for q in load_quiz(b).questions)
    assert prompts.most_common(1)[0][1] == 1, prompts.most_common(1)
    assert ids


def test_loader_rejects_semantic_errors(tmp_path):
    def bank(questions):
        path = tmp_path / "b.json"
        path.write_text(json.dumps({"title": "t", "questions": questions}))
        return path

    choice = lambda correct: {"text": "x", "correct": correct, "explanation": "because"}  # noqa
    two_right = {"id": "a", "prompt": "p", "kind": "single", "choices": [choice(True)] * 2}
    with pytest.raises(QuizError, match="exactly one"):
        load_quiz(bank([two_right]))
    one = {"id": "a", "prompt": "p", "kind": "single", "choices": [choice(True), choice(False)]}
    with pytest.raises(QuizError, match="duplicate"):
        load_quiz(bank([one, one]))
    with pytest.raises(QuizError, match="model_answer"):
        load_quiz(bank([{"id": "r", "prompt": "p", "kind": "recall", "model_answer": " "}]))
    with pytest.raises(QuizError, match="no question bank"):
        load_quiz(tmp_path / "missing.json")


# -- shuffle ---------------------------------------------------------------------------------
def test_shuffle_same_seed_same_order_and_every_order_reachable():
    for _, q in choice_questions():
        assert choice_order(q, 5) == choice_order(q, 5)
        assert sorted(choice_order(q, 5)) == list(range(len(q.choices)))
    three = next(q for _, q in choice_questions() if len(q.choices) == 3)
    four = next(q for _, q in choice_questions() if len(q.choices) == 4)
    for q in (three, four):
        seen = {choice_order(q, seed) for seed in range(2000)}
        assert seen == set(itertools.permutations(range(len(q.choices)))), len(seen)
    # questions of one quiz get their own orders, not one shared permutation
    quiz = load_quiz("02_prediction_trace")
    orders = {choice_order(q, 1) for q in quiz.questions if len(q.choices) == 3}
    assert len({choice_order(q, s) for s in range(3) for q in quiz.questions
                if len(q.choices) == 3}) > 1 and orders


def test_session_seed_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CKPTLAB_QUIZ_SEED", "42")
    assert session_seed() == 42
    widget = QuizWidget(load_quiz("01_pipeline_trace"))
    assert widget.seed == 42 and "#42" in widget.widget.children[0].value
    monkeypatch.setenv("CKPTLAB_QUIZ_SEED", "x")
    with pytest.raises(QuizError, match="whole number"):
        session_seed()
    monkeypatch.delenv("CKPTLAB_QUIZ_SEED")
    assert session_seed() == session_seed()  # drawn once per session


def test_widget_shows_choices_in_the_seeded_order():
    quiz = load_quiz("01_pipeline_trace")
    for seed in (0, 1, 2):
        widget = QuizWidget(quiz, seed=seed)
        single = next(i for i, q in enumerate(quiz.questions) if q.kind == "single")
        labels = list(widget.selectors[single].options)
        assert labels == [quiz.questions[single].choices[i].text for i in widget.orders[single]]
        widget.choose(single, widget.correct_positions(single))
        assert widget.check(single).correct


# -- grading and feedback --------------------------------------------------------------------
def first_single(quiz):
    return next(i for i, q in enumerate(quiz.questions) if q.kind == "single")


def test_grade_single_and_multiple():
    quiz = load_quiz("01_pipeline_trace")
    single = quiz.questions[first_single(quiz)]
    right = next(iter(single.correct_indices))
    assert grade(single, right).correct
    assert not grade(single, (right + 1) % len(single.choices)).correct
    multiple = next(q for q in quiz.questions if q.kind == "multiple")
    assert grade(multiple, sorted(multiple.correct_indices)).correct
    assert not grade(multiple, sorted(multiple.correct_indices)[:1]).correct


@pytest.mark.parametrize("answer,message", [(None, "choose an answer"), ([], "choose"),
                                            (99, "does not exist"), ([0, 1], "exactly one")])
def test_grade_raises_on_bad_input(answer, message):
    quiz = load_quiz("01_pipeline_trace")
    with pytest.raises(QuizError, match=message):
        grade(quiz.questions[first_single(quiz)], answer)


def test_first_attempt_scoring_and_withheld_answer():
    quiz = load_quiz("01_pipeline_trace")
    widget = QuizWidget(quiz, seed=3)
    i = first_single(quiz)
    question = quiz.questions[i]
    right = next(iter(question.correct_indices))
    wrong = [j for j in range(len(question.choices)) if j != right]
    widget.buttons[i].click()  # nothing chosen: a message, not an exception
    assert "choose an answer" in widget.feedback[i].value and widget.score.first_correct == 0
    widget.choose(i, widget.orders[i].index(wrong[0]))
    widget.buttons[i].click()
    first = widget.feedback[i].value
    assert "Not quite" in first
    assert question.choices[wrong[0]].explanation[:40] in first      # why the choice is wrong
    assert question.choices[right].text not in first                 # ...but not the answer
    assert question.choices[right].explanation[:40] not in first
    widget.choose(i, widget.orders[i].index(wrong[1]))
    widget.buttons[i].click()  # a second wrong attempt reveals the answer
    assert question.choices[right].text in widget.feedback[i].value
    widget.choose(i, widget.orders[i].index(right))
    widget.buttons[i].click()
    assert "Correct" in widget.feedback[i].value
    total = widget.score.total
    assert widget.score.first_correct == 0 and widget.score.correct == 1
    assert f"first try 0/{total} · now 1/{total}" in widget.score_label.value


def test_show_answer_before_answering_costs_the_first_try():
    quiz = load_quiz("03_loss_curves")
    widget = QuizWidget(quiz, seed=0)
    i = first_single(quiz)
    question = quiz.questions[i]
    widget.reveal_buttons[i].click()
    assert question.choices[next(iter(question.correct_indices))].text in widget.feedback[i].value
    widget.choose(i, widget.correct_positions(i))
    widget.buttons[i].click()
    assert widget.score.first_correct == 0 and widget.score.correct == 1
    j = next(k for k, q in enumerate(quiz.questions) if q.kind != "recall" and k != i)
    widget.choose(j, widget.correct_positions(j))
    widget.buttons[j].click()  # right at once: counts in both
    assert widget.score.first_correct == 1 and widget.score.correct == 2


def test_multiple_choice_first_feedback_does_not_name_the_correct_ticks():
    quiz = load_quiz("01_pipeline_trace")
    widget = QuizWidget(quiz, seed=0)
    i = next(k for k, q in enumerate(quiz.questions) if q.kind == "multiple")
    question = quiz.questions[i]
    correct = sorted(question.correct_indices)
    wrong = next(j for j in range(len(question.choices)) if j not in correct)
    widget.choose(i, [widget.orders[i].index(correct[0]), widget.orders[i].index(wrong)])
    widget.buttons[i].click()
    text = widget.feedback[i].value
    assert question.choices[wrong].explanation[:30] in text
    assert all(question.choices[c].explanation[:30] not in text for c in correct)
    assert "should not be there" in text and "not ticked" in text


def test_recall_numbers_and_names_accept_obvious_equivalents():
    numeric = Question("n", "How many?", "recall", model_answer="Zero, because...",
                       accept=(0,))
    steps = Question("s", "From which step?", "recall", model_answer="2000: ...", accept=(2000,))
    named = Question("c", "Which piece?", "recall", model_answer="The counters...",
                     accept=("counters", "step counter"))
    manifest = Question("f", "Which file?", "recall", model_answer="manifest.json lists...",
                        accept=("manifest.json",))
    for right in ("0", " 0.0 ", "zero", "exactly zero", "Exactly 0.", "no difference"):
        assert grade_recall(numeric, right).correct, right
    for wrong in ("1", "0 or 1", "small", "nearly zero, about 1e-6"):
        assert not grade_recall(numeric, wrong).correct, wrong
    for right in ("2000", "2,000", "step 2000", "from step_2000", "At step 2_000."):
        assert grade_recall(steps, right).correct, right
    assert not grade_recall(steps, "2345").correct
    assert not grade_recall(steps, "2000 or 2345").correct
    for right in ("counters", "the counters", "Counter", "step counter", "the step counters.",
                  "`counters`"):
        assert grade_recall(named, right).correct, right
    for wrong in ("optimizer", "counters and optimizer", "not the counters"):
        assert not grade_recall(named, wrong).correct, wrong
    assert grade_recall(manifest, "`Manifest.JSON`.").correct
    assert not grade_recall(manifest, "state.json").correct
    with pytest.raises(QuizError, match="type an answer"):
        grade_recall(named, "  ")


def _committer():
    return Question("why", "In your own words: why one committer?", "recall",
                    model_answer="Every rank finishes (barrier), then one rename by one rank.",
                    ideas=(Idea("every rank has finished writing first",
                                ("barrier", "all ranks", "every rank")),
                           Idea("one rename makes it appear at once",
                                ("one rank", "rank 0", "one rename", "atomic", "at once"))))


def test_prose_recall_is_graded_by_the_ideas_it_contains_not_by_one_keyword():
    """Issue 24: a correct sentence was marked wrong and the single word "atomic" right."""
    q = _committer()
    sentence = ("All ranks must finish writing their shards before rank 0 renames the "
                "directory, so the checkpoint appears in one step.")
    assert grade_recall(q, sentence).correct
    assert grade_recall(q, "Waiting at a barrier, then one rename, atomically").correct
    for keyword in ("atomic", "barrier", "one rename"):
        assert not grade_recall(q, keyword).correct, keyword
    result = grade_recall(q, "barrier")
    assert [(name, found) for name, found, _ in result.feedback] == [
        ("every rank has finished writing first", True),
        ("one rename makes it appear at once", False)]


def test_self_checked_recall_is_counted_apart_from_the_graded_score():
    free = Question("w", "Why?", "recall", model_answer="Because the whole state matters.")
    assert free.self_checked and not free.scored
    with pytest.raises(QuizError, match="self-checked"):
        grade_recall(free, "because")
    quiz = Quiz("t", (free, _committer()))
    widget = QuizWidget(quiz, seed=0)
    assert widget.score.total == 1 and widget.score.self_total == 1
    with pytest.raises(QuizError, match="compare with the model answer first"):
        widget.mark_self_check(0, True)
    had_it, missed = widget.self_check_buttons[0]
    assert had_it.layout.display == "none"          # no verdict before the comparison
    widget.selectors[0].value = "The optimizer, the buffer and the generators decide it."
    widget.reveal_buttons[0].click()
    assert html_escape(free.model_answer) in widget.feedback[0].value
    assert "Your answer:" in widget.feedback[0].value and had_it.layout.display is None
    missed.click()
    assert "self-checked: 0 of 1" in widget.score_label.value
    had_it.click()                                   # the latest verdict counts
    assert "self-checked: 1 of 1" in widget.score_label.value
    assert widget.score.first_correct == 0 and "first try 0/1" in widget.score_label.value


def test_recall_in_the_widget_hides_the_model_answer_until_asked():
    named = Question("f", "Which piece pauses learning? (its name)", "recall",
                     model_answer="The counters: the step count restarts.",
                     accept=("counters",))
    quiz = Quiz("t", (named, _committer()))
    widget = QuizWidget(quiz, seed=0)
    widget.selectors[0].value = "optimizer"
    widget.buttons[0].click()
    assert "Not what" in widget.feedback[0].value
    assert named.model_answer not in widget.feedback[0].value
    widget.selectors[0].value = "the counters"
    widget.buttons[0].click()
    assert "Correct" in widget.feedback[0].value
    assert widget.score.grades["f"].correct and not widget.score.first["f"]
    # ideas: the first miss says how many ideas are there, not which, nor the model answer
    widget.selectors[1].value = "atomic"
    widget.buttons[1].click()
    shown = widget.feedback[1].value
    assert "1 of the 2 ideas" in shown and "barrier" not in shown
    assert html_escape(quiz.questions[1].model_answer) not in shown
    widget.selectors[1].value = "atomic, really"
    widget.buttons[1].click()   # a second miss reveals the ideas and the model answer
    shown = widget.feedback[1].value
    assert "every rank has finished writing first" in shown
    assert html_escape(quiz.questions[1].model_answer) in shown


def html_escape(text):
    import html

    return html.escape(text)


# -- static view -----------------------------------------------------------------------------
@pytest.mark.parametrize("bank", BANKS, ids=lambda p: p.stem)
def test_static_view_poses_questions_with_answers_collapsed_one_by_one(bank):
    quiz = load_quiz(bank)
    page = quiz_static_html(quiz, seed=0)
    outside = re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    assert page.count("<details>") == len(quiz.questions)
    for q in quiz.questions:
        assert html_escape(q.prompt) in outside
        for c in q.choices:
            assert html_escape(c.text) in outside          # every choice visible
            assert html_escape(c.explanation) not in outside  # explanations collapsed
        if q.kind == "recall":
            assert html_escape(q.model_answer) not in outside
    assert "&#10003;" not in outside and "&#10007;" not in outside  # no verdicts outside


def test_live_widget_and_static_view_are_one_output():
    """In a kernel the widget view wins; an exported page shows the static HTML instead. No
    answers block is displayed under the live widget."""
    widget = QuizWidget(load_quiz("02_prediction_trace"), seed=0)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"] == quiz_static_html(widget.quiz, 0)
    assert "VBox" not in bundle["text/plain"]


def test_exported_page_keeps_the_static_view_and_drops_the_widget(tmp_path):
    """What tools/refresh_notebooks.py and tools/build_site.py do to a quiz output: the widget
    view goes (it needs a kernel), the static view stays and is what the page shows."""
    import sys

    import nbformat
    from nbconvert import HTMLExporter

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from refresh_notebooks import clean

    widget = QuizWidget(load_quiz("04_interrupt_and_resume"), seed=0)
    output = nbformat.v4.new_output("display_data", data=widget._repr_mimebundle_())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("show_quiz(...)",
                                                                   outputs=[output])])
    clean(nb)
    assert list(nb.cells[0].outputs[0]["data"]) == ["text/html"]
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    assert "answers and explanations" in page and "<details>" in page
    assert "VBox(children" not in page
