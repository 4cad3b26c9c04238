"""The self-check quizzes: the right answer moves around, each question is on its own chapter, math is typeset.

Each quiz (quizzes/NN_topic.ipynb) builds `QUESTIONS`, a list of jupyterquiz dicts, in a hidden cell,
and shows them with `display_quiz`. The website shows the stored outputs, so these checks read the
questions from there, the JSON that jupyterquiz's script embeds, and check that the source still
builds the same list. No kernel runs: the question cells use only `math` and `fractions`.

- Position of the right answer. If it sat first in every question, "always click the first" would
  score 100 %. Over the course, and in every quiz with at least three multiple-choice questions, no
  position may hold more than 60 % of the right answers, and the page must shuffle them on top.
- Topic. A quiz asks only about what its chapter, or an earlier one, teaches. Mechanically: every
  glossary term (appendix/glossary.md) and every other technical name in TERMS that occurs in a
  question, an answer or a feedback must occur in the text (markdown and code) of the quiz's chapter
  or of an earlier chapter; so must every work it cites.
- Math. jupyterquiz turns $...$ into MathJax math; plain-text formulas ("sqrt(d_k)", "N x N") are not
  left in question, answer or feedback text. Code names go in <code>...</code>. Answer buttons keep
  to words: a screen reader names a button by its text and leaves typeset math out of that name.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import json
import re
from collections import Counter
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIZZES = sorted((ROOT / "quizzes").glob("*.ipynb"))
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_SHARE = 0.6  # of the right answers, at any one position

# jupyterquiz's script starts with `var questions<box id>=<JSON>;` (jupyterquiz/dynamic/loader.py).
EMBEDDED = re.compile(r"var questions\w+=(\[.*?\]);\n\nif \(typeof Question === 'undefined'\)", re.S)


# ---------------------------------------------------------------------------------------------
# Reading the notebooks


def notebook(path: Path):
    return nbformat.read(path, as_version=4)


def code_cell(nb, marker: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"expected one code cell containing {marker!r}, found {len(cells)}"
    return cells[0]


def stored_questions(nb) -> list[dict]:
    """The questions as the page gets them: the JSON in the display cell's stored script."""
    scripts = [out["data"]["application/javascript"] for out in code_cell(nb, "display_quiz(").outputs
               if "application/javascript" in out.get("data", {})]
    found = [m.group(1) for script in scripts for m in [EMBEDDED.search(script)] if m]
    assert len(found) == 1, "the display cell has no stored jupyterquiz script: re-execute the quiz"
    return json.loads(found[0])


def source_questions(nb) -> list[dict]:
    """The questions the source builds, run in this process (the cell needs only math)."""
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code_cell(nb, "QUESTIONS = [").source, "<QUESTIONS cell>", "exec"), namespace)
    return json.loads(json.dumps(namespace["QUESTIONS"]))


def chapter_of(quiz: Path) -> int:
    return int(quiz.name[:2])


@functools.cache
def chapter_text(number: int) -> str:
    """Markdown and code of chapters 1 to `number`: what the quiz of chapter `number` may ask about."""
    taught = []
    for path in CHAPTERS:
        if int(path.name[:2]) <= number:
            taught += [c.source for c in notebook(path).cells if c.cell_type in ("markdown", "code")]
    return "\n".join(taught)


def texts_of(question: dict) -> list[str]:
    """What a learner reads: the question, each answer and each feedback."""
    return [question["question"]] + [a[key] for a in question["answers"] for key in ("answer", "feedback") if key in a]


def is_multiple_choice(question: dict) -> bool:
    return question["type"] == "multiple_choice"


def right_position(question: dict) -> int:
    right = [i for i, a in enumerate(question["answers"]) if a["correct"]]
    assert len(right) == 1, f"a multiple-choice question needs exactly one right answer: {question['question']!r}"
    return right[0]


def largest_share(positions: list[int]) -> tuple[int, float]:
    """The position holding the most right answers, and its share of them."""
    position, count = Counter(positions).most_common(1)[0]
    return position, count / len(positions)


# ---------------------------------------------------------------------------------------------
# Topics: glossary terms and the course's other technical names


def glossary_terms() -> list[str]:
    text = (ROOT / "appendix" / "glossary.md").read_text(encoding="utf-8")
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line[0].isspace()
            and not line.startswith(":")]


def spelled(term: str) -> str:
    """A regex for a term, case aside: words joined by spaces or hyphens, an optional plural."""
    words = [re.escape(w) for w in re.split(r"[\s-]+", term)]
    if words[-1].endswith("y"):  # query, queries
        words[-1] = words[-1][:-1] + "(?:y|ies)"
    return r"[\s-]+".join(words) + r"(?:s|es)?"


# Other spellings of glossary terms (regexes).
ALIASES = {
    "Attention score": [r"scores?"],  # chapter 1 calls them scores from the start
    "Causal mask": [r"causal"],
    "Feed-forward network": [r"feed-forward", r"FFN"],
    "FlashAttention": [r"flash[\s-]*attention"],
    "Grouped-query attention": [r"grouped-query", r"GQA"],
    "Layer normalization": [r"layer[\s-]*norm(?:ali[sz]ation)?", r"LN"],
    "Multi-query attention": [r"multi-query", r"MQA"],
    "Paged attention": [r"PagedAttention"],
    "Positional encoding": [r"position(?:al)? (?:encoding|embedding)s?"],
    "Residual connection": [r"residual"],
    "RoPE": [r"rotary"],
    "Top-p sampling": [r"top-p", r"nucleus sampling"],
}

# Technical names outside the glossary that a question could lean on (regexes).
TERMS = {
    "autograd": [r"autograd"],
    "batch normalization": [r"batch[\s-]*norm(?:ali[sz]ation)?"],
    "bertviz": [r"bertviz"],
    "block table": [r"block tables?"],
    "BERT": [r"BERT(?:-large|-base)?"],
    "GPT-2": [r"GPT-2"],
    "GPU": [r"GPUs?", r"HBM", r"SRAM", r"on-chip"],
    "gradient": [r"gradients?"],
    "IndexError": [r"IndexError"],
    "KiB": [r"KiB"],
    "Llama": [r"Llama(?:-\d[\w-]*)?"],
    "log-sum-exp": [r"log-sum-exp"],
    "logit": [r"logits?"],
    "long-range arena": [r"long-range arena"],
    "Mistral": [r"Mistral"],
    "nn.Embedding": [r"nn\.Embedding"],
    "nn.MultiheadAttention": [r"nn\.MultiheadAttention"],
    "permutation-equivariant": [r"permutation[\s-]*equivarian(?:t|ce)"],
    "post-LN": [r"post-LN"],
    "pre-LN": [r"pre-LN"],
    "previous-token head": [r"previous[\s-]token"],
    "radian": [r"radians?"],
    "reshape": [r"reshape"],
    "saturation": [r"saturat\w*"],
    "scaled_dot_product_attention": [r"scaled_dot_product_attention"],
    "sinusoidal": [r"sinusoidal"],
    "sub-layer": [r"sub-layers?"],
    "tile": [r"tiles?", r"tiled"],
    "token id": [r"token ids?"],
    "transpose": [r"transpose"],
    "tril": [r"tril"],
    "variance": [r"variances?"],
}


def term_patterns() -> dict[str, re.Pattern]:
    groups = {term: [spelled(term)] + ALIASES.get(term, []) for term in glossary_terms()}
    groups.update(TERMS)
    return {term: re.compile(r"(?<![\w-])(?:" + "|".join(forms) + r")(?!\w)", re.I) for term, forms in groups.items()}


PATTERNS = term_patterns()
# (Dao et al., 2022), Vaswani et al. (2017), (Ba et al., 2016), Zhang and Sennrich (2019)
CITATION = re.compile(r"\b([A-Z][\w'-]+)(?: et al\.| and [A-Z][\w'-]+)?,? \(?((?:19|20)\d\d)\b")


def untaught(texts: list[str], taught: str) -> list[str]:
    """Terms and cited works in `texts` that `taught` never mentions."""
    text = "\n".join(texts)
    missing = [term for term, pattern in PATTERNS.items() if pattern.search(text) and not pattern.search(taught)]
    for author, year in sorted(set(CITATION.findall(text))):
        if not re.search(rf"\b{re.escape(author)}\b[^\n]{{0,80}}?\b{year}\b", taught):
            missing.append(f"{author} ({year})")
    return missing


# ---------------------------------------------------------------------------------------------
# Math


# Math spans ($...$, $$...$$) and code spans (<code>...</code>) are removed before the checks below.
MATH_SPAN = re.compile(r"\$\$.+?\$\$|\$.+?\$", re.S)
CODE_SPAN = re.compile(r"<code>.*?</code>", re.S)
ASCII_MATH = {
    "sqrt( written out": re.compile(r"sqrt\s*\("),
    "function call as text (exp(, sin(, softmax(...)": re.compile(r"\b(?:exp|log|sin|cos|softmax|PE)\s*\("),
    "x as a multiplication sign": re.compile(r"(?<=[\w)\]]) x (?=[\w(\[])"),
    "3x for three times (write 3×)": re.compile(r"\b\d+(?:\.\d+)?x\b"),
    "subscript written with _ (d_k, W_Q)": re.compile(r"\b[A-Za-z]+_\w+"),
    "power or transpose written with ^": re.compile(r"\^"),
    "dot product written as ' . '": re.compile(r"(?<=\w) \. (?=\w)"),
    "equation in plain text": re.compile(r"(?<=[\w)]) = (?=[-\w(])"),
    "Greek letter spelled out": re.compile(r"\b(?:theta|phi|omega|sigma|alpha)\b", re.I),
    "absolute value in bars": re.compile(r"\|[^|\n]+\|"),
}


def ascii_math(text: str) -> list[str]:
    """Plain-text formulas left outside $...$ (and outside <code>), and math that will not typeset."""
    found = []
    if len(re.findall(r"(?<!\\)\$", text)) % 2:
        found.append(f"unbalanced $ in {text!r}")
    for span in MATH_SPAN.findall(text):
        if re.search(r"[<>]", span):  # the quiz inserts text as HTML: write \lt, \gt, \le, \ge
            found.append(f"< or > inside math: {span!r}")
    prose = MATH_SPAN.sub(" ", CODE_SPAN.sub(" ", text))
    for name, pattern in ASCII_MATH.items():
        found += [f"{name}: ...{prose[max(0, m.start() - 20):m.end() + 20]}..." for m in pattern.finditer(prose)]
    return found


# ---------------------------------------------------------------------------------------------
# The tests


def quiz_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_chapter_has_its_quiz():
    assert [p.name for p in QUIZZES] == [p.name for p in CHAPTERS] and len(QUIZZES) == 10


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_the_page_shows_the_questions_the_source_builds(quiz):
    nb = notebook(quiz)
    assert stored_questions(nb) == source_questions(nb), "re-execute the quiz: its stored questions are stale"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_every_question_is_well_formed(quiz):
    for question in stored_questions(notebook(quiz)):
        if is_multiple_choice(question):
            right_position(question)
            assert len(question["answers"]) >= 3, question["question"]
        else:  # numeric: the right answer is a number, checked as a number
            assert question["type"] == "numeric", question["question"]
            right = [a for a in question["answers"] if a.get("correct")]
            assert right and all(isinstance(a.get("value", a.get("range")), (int, float, list)) for a in right)
            assert all(isinstance(v, (int, float)) for a in right for v in ([a["value"]] if "value" in a else a["range"]))


def numeric_verdict(question: dict, typed: str) -> dict | None:
    """The answer jupyterquiz matches when a learner types `typed` (jupyterquiz/js/numeric.js).

    With a precision p it rounds the typed number and each answer's value to p significant digits
    (JavaScript's toPrecision, which throws unless 1 <= p <= 100) and compares them; a range
    matches from its low end up to, not including, its high end. None: the default feedback.
    """
    precision = question.get("precision")
    if precision is not None and not (isinstance(precision, int) and 1 <= precision <= 100):
        raise ValueError(f"toPrecision({precision!r}) throws in the browser: the quiz never answers")
    rounded = (lambda x: float(f"{x:.{precision}g}")) if precision else float
    submitted = rounded(float(typed))
    for answer in question["answers"]:
        if "value" in answer and submitted == rounded(answer["value"]):
            return answer
        if "range" in answer and answer["range"][0] <= submitted < answer["range"][1]:
            return answer
    return None


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_a_learner_who_types_the_right_number_is_told_so(quiz):
    for question in stored_questions(notebook(quiz)):
        if question["type"] != "numeric":
            continue
        right = next(a for a in question["answers"] if a.get("correct") and "value" in a)
        # As the question asks: "Three decimals", or else the whole number.
        typed = f"{right['value']:.3f}" if "Three decimals" in question["question"] else str(right["value"])
        assert numeric_verdict(question, typed) is right, f"typing {typed} does not give the right answer: {question['question']}"
        for wrong in question["answers"]:
            if "value" in wrong and not wrong["correct"]:  # a named mistake gets its own feedback
                assert numeric_verdict(question, str(wrong["value"])) is wrong, wrong["feedback"]


def test_over_the_course_no_position_holds_most_right_answers():
    positions = [right_position(q) for quiz in QUIZZES for q in stored_questions(notebook(quiz)) if is_multiple_choice(q)]
    position, share = largest_share(positions)
    assert share <= MAX_SHARE, f"{share:.0%} of the course's right answers sit at position {position}: {positions}"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_in_each_quiz_no_position_holds_most_right_answers(quiz):
    positions = [right_position(q) for q in stored_questions(notebook(quiz)) if is_multiple_choice(q)]
    if len(positions) >= 3:
        position, share = largest_share(positions)
        assert share <= MAX_SHARE, f"{share:.0%} of this quiz's right answers sit at position {position}: {positions}"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_the_page_shuffles_the_answers(quiz):
    nb = notebook(quiz)
    cell = code_cell(nb, "display_quiz(")
    calls = [node for node in ast.walk(ast.parse(cell.source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "display_quiz"]
    assert len(calls) == 1
    shuffle = {k.arg: k.value for k in calls[0].keywords}.get("shuffle_answers")
    assert isinstance(shuffle, ast.Constant) and shuffle.value is True, "call display_quiz(..., shuffle_answers=True)"
    html = [out["data"]["text/html"] for out in cell.outputs if "text/html" in out.get("data", {})]
    # jupyterquiz's script reads this attribute (show_questions.js: === 'True').
    assert any('data-shuffleanswers="True"' in h for h in html), "re-execute the quiz: its stored box does not shuffle"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_the_quiz_brings_mathjax_where_the_page_has_none(quiz):
    """jupyterquiz typesets only with a MathJax already on the page, which Colab has not.

    The display cell loads MathJax after the quiz, from the CDN URL the website rewrites to its own
    copy (_ext/riverbank_site.py), and only where the page has no MathJax.
    """
    spec = importlib.util.spec_from_file_location("riverbank_site", ROOT / "_ext" / "riverbank_site.py")
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)
    outputs = code_cell(notebook(quiz), "display_quiz(").outputs
    scripts = [out["data"].get("application/javascript", "") for out in outputs]
    quiz_at = next(i for i, s in enumerate(scripts) if EMBEDDED.search(s))
    loaders = [i for i, s in enumerate(scripts) if 'typeof window.MathJax === "undefined"' in s
               and any(re.search(pattern, s) for pattern, _ in site.REWRITES)]
    assert loaders and min(loaders) > quiz_at, "display the MathJax loader after the quiz, from the CDN URL the site rewrites"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_every_question_is_taught_by_its_chapter_or_an_earlier_one(quiz):
    taught = chapter_text(chapter_of(quiz))
    found = {q["question"][:60]: missing for q in stored_questions(notebook(quiz))
             if (missing := untaught(texts_of(q), taught))}
    assert not found, f"chapters 1 to {chapter_of(quiz)} never mention: {found}"


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_quiz_math_is_typeset(quiz):
    found = [hit for q in stored_questions(notebook(quiz)) for text in texts_of(q) for hit in ascii_math(text)]
    assert not found, "write formulas as $...$ and code as <code>...</code>: " + "\n".join(found)


@pytest.mark.parametrize("quiz", QUIZZES, ids=quiz_id)
def test_answer_buttons_keep_their_words(quiz):
    """An answer is a button, and its accessible name is its text without the typeset math.

    In Chromium, an answer "$n - m$, their distance" is named ", their distance", and "$(0, 1)$" has
    no name at all (axe: label, critical). Formulas go in the question and the feedback.
    """
    found = [a["answer"] for q in stored_questions(notebook(quiz)) if is_multiple_choice(q)
             for a in q["answers"] if "$" in a["answer"]]
    assert not found, f"answers a screen reader would read without their math: {found}"


# The question chapter 1's quiz used to ask, on a chapter 6 topic.
OLD_FLASH_QUESTION = {
    "question": "What does FlashAttention improve?", "type": "multiple_choice", "answers": [
        {"answer": "Both speed and memory, with the exact same result", "correct": True,
         "feedback": "Right. It never stores the N x N score matrix in GPU main memory, so memory grows linearly with "
                     "sequence length and fewer memory reads make it faster (Dao et al., 2022)."},
        {"answer": "Only speed", "correct": False,
         "feedback": "It is faster, but its first gain is memory: the N x N matrix is never written out."},
        {"answer": "Only memory, at the cost of an approximation", "correct": False,
         "feedback": "FlashAttention is exact: it computes the same attention, in tiles, with an online softmax."}]}


def test_the_checks_catch_what_they_are_for():
    # Topic: the old FlashAttention question is flagged in chapter 1's quiz, and only there.
    flagged = untaught(texts_of(OLD_FLASH_QUESTION), chapter_text(1))
    assert {"FlashAttention", "GPU", "tile", "Online softmax", "Dao (2022)"} <= set(flagged)
    assert untaught(texts_of(OLD_FLASH_QUESTION), chapter_text(6)) == []
    assert "KV cache" in untaught(["What does the KV cache store?"], chapter_text(4))
    assert untaught(["Softmax of the scores of the query and the key"], chapter_text(1)) == []
    # Numeric answers: jupyterquiz's rounding, and a precision the browser refuses.
    question = {"type": "numeric", "precision": 2, "question": "?", "answers": [
        {"type": "value", "value": -0.056131, "correct": True}, {"type": "range", "range": [0.29, 0.31], "correct": False}]}
    assert numeric_verdict(question, "-0.056") is question["answers"][0]
    assert numeric_verdict(question, "0.3") is question["answers"][1] and numeric_verdict(question, "0.5") is None
    with pytest.raises(ValueError):
        numeric_verdict({**question, "precision": 0}, "-0.056")
    # Position: the right answer always first is caught, a spread is not.
    assert largest_share([0] * 23) == (0, 1.0)
    assert largest_share([0, 1, 2] * 7 + [0, 1])[1] <= MAX_SHARE
    # Math: written-out formulas are caught; typeset ones and code are not.
    for bad in ["Why divide by sqrt(d_k)?", "the N x N scores", "1.2 x 0.9", "d_k = 3", "Q K^T", "q . k",
                "exp(2 - 4)", "a 3x speedup", "theta_1", "|n - m|", "one $ sign", "$j < i$"]:
        assert ascii_math(bad), bad
    for good in [r"Why divide by $\sqrt{d_k}$?", r"the $N \times N$ scores", "<code>attn_mask</code> and <code>head_dim</code>",
                 r"$\theta_1 = 10000^{-1/4}$", "a 15× speedup, 15% end to end", "the model's output; the scores"]:
        assert not ascii_math(good), good
