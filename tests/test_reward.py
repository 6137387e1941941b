"""reward.py: both scorers of every task against tables of the official semantics (written from
reading the official functions, case by case), the linear-time scanners against the regexes they
replace, the arithmetic parser against Python itself on strings the test generates, the generators
and loaders, and hostile text (10,000 strings per verifier: never raises, stays in range)."""
import json
import os
import random
import re
import warnings

import pytest

import reward as R

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")
SUDOKU = {"puzzle": "3102200002100320", "solution": "3142243142131324"}  # blanks 2,5,6,7,8,11,12,15 -> 4,4,3,1,4,3,1,4
COUNTDOWN = {"numbers": [3, 5, 7], "target": 22}
GSM = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "72", "value": 72.0, "solution": "3 + 4 ..."}
EOT, EOS = "<|eot_id|>", "<|endoftext|>"


# ---------------------------------------------------------------- sudoku

SUDOKU_REWARD = [  # (completion text, official training reward)
    ("<answer>3142243142131324</answer>", 1.0),
    ("<answer>\n3142\n2431\n4213\n1324\n</answer>", 1.0),                      # digits read through layout
    ("<answer>0000000000000000</answer> <answer>3142243142131324</answer>", 1.0),  # the last tag
    ("<answer>3142243142131324</answer> <answer>0</answer>", 0.0),
    ("3142243142131324", 0.0),                                                  # no tags, no answer
    ("<answer>31422431</answer>", 4 / 8),                                       # padded with '0'
    ("<answer>3142243142131324999</answer>", 1.0),                              # cut to 16
    ("<answer>1111111111111111</answer>", 2 / 8),
    ("<answer></answer>", 0.0), ("<answer>no digits</answer>", 0.0),
    ("<answer>3142243142131324", 0.0),                                          # never closed
    ("<answer>31²2243142131324</answer>", 7 / 8),                               # str.isdigit keeps '²' (a wrong cell)
]


@pytest.mark.parametrize("text, reward", SUDOKU_REWARD)
def test_sudoku_training_reward_is_the_official_one(text, reward):
    assert R.get_task("sudoku").reward(text, SUDOKU, "chat") == pytest.approx(reward)


SUDOKU_ACCURACY = [  # (raw completion, correct cells out of 8) under the official eval parser
    ("<answer>3142243142131324</answer>" + EOT, 8),
    ("<answer>\n3142243142131324\n" + EOT + EOS * 3, 8),                       # closed by the end-of-turn token
    ("<answer>\n```\n3142 2431\n4213 1324\n```\n</answer>", 8),                 # digits in a fence win first
    ("<answer>```   ```</answer> 3142243142131324", 0),                         # a blank fence: the next pattern reads '```   ```'
    ("<answer>\n</answer>\n3142243142131324" + EOT, 8),                         # empty answer: the text after </answer>
    ("<answer></answer>\n", 0),
    ("I think 3142243142131324 is it", 8),                                      # a 16-digit word anywhere
    ("x3142243142131324 and 1111111111111111", 2),                              # not a word: the second one
    ("<answer>31422431</answer>", 4),                                           # padded with '0'
    ("<answer>3142243142131324</answer><answer>1111111111111111</answer>", 8),  # the first answer, unlike training
    ("", 0), ("no answer at all", 0),
    ("12 3142243142131324 </answer>", 8),                                       # 16 digits right before </answer>
]


@pytest.mark.parametrize("raw, right", SUDOKU_ACCURACY)
def test_sudoku_accuracy_is_the_official_eval_parser(raw, right):
    a = R.get_task("sudoku").accuracy(raw, SUDOKU, "chat")
    assert (a["correct"], a["total"], a["solved"]) == (right, 8, float(right == 8))


def test_the_tiny_style_reads_its_text_as_the_answer():
    task = R.get_task("sudoku")
    for text, right in [("3142243142131324", 8), ("3142x2431 42131324", 8), ("3142243142131321", 7), ("", 0)]:
        assert task.reward(text, SUDOKU, "tiny") == right / 8
        assert task.accuracy(text, SUDOKU, "tiny")["correct"] == right
    assert task.accuracy("", SUDOKU, "tiny")["answered"] == 0.0


def test_there_are_288_grids_and_the_split_is_solution_disjoint_for_every_seed():
    task = R.get_task("sudoku")
    assert len(R.all_grids()) == 288 and all(R.valid_grid(g) for g in R.all_grids())
    for seed in range(3):
        train = task.examples("train", 400, seed)
        test = task.examples("test", 200, seed)
        assert not {e["solution"] for e in train} & {e["solution"] for e in test}
        for e in train + test:
            assert R.valid_grid(e["solution"]) and e["puzzle"].count("0") == 8
            assert all(p in ("0", s) for p, s in zip(e["puzzle"], e["solution"]))
    assert task.examples("test", 5, 0) == task.examples("test", 5, 0)
    assert task.examples("test", 5, 0) != task.examples("test", 5, 1)


def test_excluded_grids_never_appear_in_training():
    task = R.get_task("sudoku")
    held_out = set(task.grids["train"][:200])
    train = task.examples("train", 2000, 0, exclude=held_out)
    assert {e["solution"] for e in train} == set(task.grids["train"][200:])
    with pytest.raises(ValueError, match="every train grid of the generator is excluded"):
        task.examples("train", 5, 0, exclude=task.grids["train"])


def test_sudoku_csv_loader_and_its_errors(tmp_path):
    task = R.get_task("sudoku")
    good = tmp_path / "s.csv"
    good.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n\n")
    assert task.load(str(good)) == [SUDOKU]
    bad = tmp_path / "bad.csv"
    bad.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n31022000,3142243142131324\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: expected two 16-digit strings"):
        task.load(str(bad))
    bad.write_text("Puzzle,Solution\n3102200002100320,1111243142131324\n")
    with pytest.raises(ValueError, match="line 2: the solution is not a valid grid"):
        task.load(str(bad))
    bad.write_text("Puzzle,Solution\n")
    with pytest.raises(ValueError, match="no puzzles after the header"):
        task.load(str(bad))
    bad.write_bytes(b"Puzzle,Solution\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        task.load(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.load(str(tmp_path / "absent.csv"))


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data is absent")
def test_official_sudoku_file_loads_and_its_solutions_score_full():
    task = R.get_task("sudoku")
    rows = task.load(os.path.join(DATA, "sudoku_4x4_test.csv"))
    assert len(rows) == 500 and all(r["puzzle"].count("0") == 8 for r in rows)
    for r in rows[:50]:
        for s in R.STYLES:
            g = task.grade(task.reference(r, s), task.reference(r, s), r, s)
            assert g["reward"] == 1.0 and g["correct"] == g["total"] == 8


# ---------------------------------------------------------------- Python arithmetic without eval

ARITHMETIC = [  # (text, what Python's eval gives, None where it raises)
    ("3*5+7", 22), ("(3+5)*7", 56), ("7/(5-3)", 3.5), (" 2 - -3 ", 5), ("10-2-3", 5), ("2*3/4", 1.5),
    ("100/10/5", 2.0), ("2**3**2", 512), ("-2**2", -4), ("2**-1", 0.5), ("2**-2**2", 0.0625), ("7//2", 3),
    ("7.", 7.0), (".5+1", 1.5), ("00", 0), ("00.5", 0.5), ("(3+\n4)", 7), ("(3+\r\n4)*2", 14), ("3\t+\f4", 7),
    ("--3", 3), ("((((1))))", 1), ("3*5+7.", 22.0),
    ("007", None), ("3+\n4", None), ("1/0", None), ("0**-1", None), ("1.2.3", None), ("1..2", None),
    ("...", None), ("(3)(4)", None), ("3(4)", None), ("3 4", None), ("()", None), ("2***3", None), ("3/ /2", None),
    ("(1+2", None), ("1+2)", None), ("", None), ("1e5", None), ("٣+1", None), ("3\xa0+4", None), ("3\x0b+4", None),
    ("(" * 201 + "1" + ")" * 201, None), ("(" * 200 + "1" + ")" * 200, 1), ("9" * 4301, None),
    ("99**99**99", None),  # Departure: an exponent bomb is refused (Python would not finish)
    ("__import__('os')", None), ("3*5+7 = 22", None),
]


@pytest.mark.parametrize("text, value", ARITHMETIC)
def test_arithmetic_has_pythons_semantics(text, value):
    got = R.python_arithmetic(text)
    assert got == value and type(got) is type(value)


def test_arithmetic_agrees_with_python_on_generated_strings():
    """The oracle is Python's own eval, on strings this test generates (never model text), without
    powers whose exponent has more than one digit (Python would take minutes on 9**9**9)."""
    rng = random.Random(0)
    alphabet = list("0123456789") * 3 + list("+-*/().") * 2 + [" ", "\n", "\t", "**", "//", "٣", "\xa0", "00", "7."]
    checked = 0
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))).strip()
        if re.search(r"\*\*\s*[-+(]*\s*\d\d", s) or s.count("**") > 1:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = eval(s, {"__builtins__": None}, {}) if s and R._ARITHMETIC_CHARS.fullmatch(s) else None
        except Exception:
            expected = None
        if not isinstance(expected, (int, float, complex)):
            expected = None
        got = R.python_arithmetic(s)
        assert (got is None and expected is None) or (got == expected and type(got) is type(expected)), repr(s)
        checked += 1
    assert checked > 15000


# ---------------------------------------------------------------- countdown

COUNTDOWN_REWARD = [  # (text, official training reward)
    ("<answer>3*5+7</answer>", 1.0), ("<answer>7+5*3</answer>", 1.0), ("<answer> (7 + 5 * 3) </answer>", 1.0),
    ("<answer>3*5+7.</answer>", 1.0),                    # '7.' is a Python float literal
    ("<answer>3*5+7 = 22</answer>", 0.1),                # '=' is not arithmetic
    ("<answer>(3+5)*7</answer>", 0.1),                   # wrong value
    ("<answer>3*5+7+0</answer>", 0.1),                   # an extra number
    ("<answer>5*3+7+7-7</answer>", 0.1),                 # a number used twice
    ("<answer>__import__('os')</answer>", 0.1),
    ("<answer>\\boxed{3*5+7}</answer>", 0.1),            # LaTeX is not arithmetic for the training reward
    ("<answer></answer>", 0.1),                          # an empty answer is an answer
    ("<answer>3*5+7</answer><answer>1</answer>", 0.1),   # the last tag
    ("3*5+7", 0.0), ("", 0.0),
    ("<answer>3*5+007</answer>", 0.1),                   # Python rejects leading zeros
    ("<answer>(3*\n5)+7</answer>", 1.0),                 # a line break inside parentheses
]


@pytest.mark.parametrize("text, reward", COUNTDOWN_REWARD)
def test_countdown_training_reward_is_the_official_one(text, reward):
    assert R.get_task("countdown").reward(text, COUNTDOWN, "chat") == reward


COUNTDOWN_ACCURACY = [  # (raw completion, correct under the official eval parser)
    ("<answer>\n3*5+7\n</answer>" + EOT, True),
    ("<answer>\\boxed{3*5+7}</answer>", True),               # the box is unwrapped
    ("<answer>\\boxed{3 \\times 5 + 7}</answer>", True),     # LaTeX operators read as Python's
    ("<answer>3*5+7 = 22</answer>", True),                   # 'expression = number': the expression
    ("<answer>3*5+7</answer><answer>1</answer>", True),      # the first tag, unlike training
    ("3*5+7", True),                                         # no box, no tag: the whole text
    ("\\boxed 3*5+7$ and more", True),                       # '\boxed ' with a space, up to '$'
    ("<answer>\\fbox{3*5+7}</answer>", False),                # \fbox is found but cannot be unwrapped: the tag's '\fbox{...}'
    ("<answer>(3+5)*7</answer>", False), ("", False),
]


@pytest.mark.parametrize("raw, correct", COUNTDOWN_ACCURACY)
def test_countdown_accuracy_is_the_official_eval_parser(raw, correct):
    assert R.get_task("countdown").accuracy(raw, COUNTDOWN, "chat")["correct"] == float(correct)


def test_countdown_examples_are_in_the_official_range_and_solved_by_their_reference():
    task = R.get_task("countdown")
    train, test = task.examples("train", 300, 0), task.examples("test", 100, 0)
    assert not {task.key(e) for e in train} & {task.key(e) for e in test}
    for e in train + test:
        assert 1 <= e["target"] <= 100 and all(1 <= n <= 100 for n in e["numbers"])
        for style in task.styles:
            assert task.reward(task.reference(e, style), e, style) == 1.0
        assert len(task.prompt(e, "tiny")) <= 16 and len(task.reference(e, "tiny")) <= 16
    excluded = {task.key(e) for e in test}
    assert not {task.key(e) for e in task.examples("test", 100, 1, exclude=excluded)} & excluded


def test_the_solver_finds_exactly_the_reachable_targets():
    from fractions import Fraction
    nums = [2, 3, 7]  # brute force over every expression tree of three numbers, in exact arithmetic
    ops = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b if b else None]
    values = set()
    for a, b, c in {(x, y, z) for x in nums for y in nums for z in nums if sorted((x, y, z)) == nums}:
        for f in ops:
            for g in ops:
                for v in (g(f(Fraction(a), b), c) if f(Fraction(a), b) is not None else None,
                          g(Fraction(a), f(Fraction(b), c)) if f(Fraction(b), c) is not None else None):
                    if v is not None and v > 0 and v.denominator == 1:
                        values.add(int(v))
    found = R.solve_countdown(nums)
    assert set(found) == values
    assert all(abs(R.python_arithmetic(e) - v) < 1e-9 for v, e in found.items())


def test_countdown_loaders_read_the_official_and_hub_formats(tmp_path):
    task = R.get_task("countdown")
    official = tmp_path / "cd.jsonl"
    official.write_text('{"input": "3,5,7", "output": "22"}\n{"input": "30,100,93", "output": "23"}\n')
    hub = tmp_path / "hub.jsonl"
    hub.write_text('{"nums": [3, 5, 7], "target": 22}\n')
    assert task.load(str(official))[0] == COUNTDOWN and task.load(str(hub)) == [COUNTDOWN]
    for row, message in [('{"input": "3,5,7"}', "missing field 'output' or 'target'"),
                         ('{"input": "3,five,7", "output": "22"}', "numbers and target must be integers"),
                         ('{"nums": [3, 5, 7], "target": 22.5}', "numbers and target must be integers"),
                         ('{"nums": [3, 5, true], "target": 22}', "numbers and target must be integers"),
                         ('{"nums": "357", "target": 22}', None), ('{"input": "3,5,7", "output": "22"', "not valid JSON"),
                         ('{"input": null, "output": "22"}', "missing field 'input' or 'nums'")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(row + "\n")
        if message is None:  # a string of numbers is split on commas: "357" is the one number 357
            assert task.load(str(bad))[0]["numbers"] == [357]
            continue
        with pytest.raises(ValueError, match="line 1: " + re.escape(message)):
            task.load(str(bad))


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data is absent")
def test_official_countdown_file_loads_and_solvable_rows_score_full():
    task = R.get_task("countdown")
    rows = task.load(os.path.join(DATA, "countdown_cd3_test.jsonl"))
    assert len(rows) == 256 and all(len(r["numbers"]) == 3 for r in rows)
    solvable = [r for r in rows if r["target"] in R.solve_countdown(r["numbers"])]
    assert len(solvable) > 200
    for r in solvable:
        ref = task.reference(r, "chat")
        assert task.grade(ref, ref, r, "chat") == {"reward": 1.0, "correct": 1.0, "total": 1, "answered": 1.0}


# ---------------------------------------------------------------- gsm8k

GSM8K_REWARD = [  # (text, official "gsm8k" reward: the final number as a string)
    ("so The answer is 72.", 1.0), ("The answer is 72", 0.0),         # the regex's last '.' eats a digit: '7'
    ("#### 72", 1.0), ("#### 72 and The answer is 5.", 0.0),          # 'The answer is' wins
    ("3 + 4 = 72", 1.0), ("72 or maybe 7", 0.0), ("\\boxed{72}", 1.0),
    ("#### 72.0", 0.0), ("The answer is 1,072.", 0.0), ("-72", 0.0), ("", 0.0),
]


@pytest.mark.parametrize("text, reward", GSM8K_REWARD)
def test_gsm8k_training_reward_is_the_official_one(text, reward):
    assert R.get_task("gsm8k").reward(text, GSM, "chat") == reward


CANONICAL = "<reasoning>\n3 + 4 = 72\n</reasoning>\n<answer>\n72\n</answer>"
GSM8K_XML_REWARD = [  # (text, official gsm8k_xml reward: tag count + soft + strict + int + 2·correct)
    (CANONICAL, 0.5 - 0.012 + 0.001 + 0.5 + 0.0 + 0.5 + 2.0),               # 3.489: strict needs the final newline
    (CANONICAL + "\n", 0.5 - 0.013 + 0.0 + 0.5 + 0.5 + 0.5 + 2.0),
    (CANONICAL + "\n\n", 0.5 - 0.014 - 0.001 + 0.5 + 0.5 + 0.5 + 2.0),       # a blank line still ends strictly
    (CANONICAL + " and some text", 0.5 - 0.026 - 0.013 + 0.5 + 0.0 + 0.5 + 2.0),  # length penalties
    (CANONICAL.replace("72\n</answer>", "99\n</answer>"), 0.5 - 0.012 + 0.001 + 0.5 + 0.0 + 0.5 + 0.0),
    ("<reasoning>x</reasoning> <answer>72</answer>", 0.5 + 0.5 + 2.0),       # soft only: no tag counts
    ("Sure! <reasoning>x</reasoning><answer>72</answer>", 0.5 + 2.0),         # soft is anchored at the start
    ("<answer>\n72\n</answer>", 0.125 + 0.001 + 0.5 + 2.0),                 # "\n<answer>\n" needs the line break before
    ("<answer>72 apples</answer>", 0.0), ("", 0.0),
]


@pytest.mark.parametrize("text, reward", GSM8K_XML_REWARD)
def test_gsm8k_xml_training_reward_is_the_official_sum(text, reward):
    assert R.get_task("gsm8k-xml").reward(text, GSM, "chat") == pytest.approx(reward, abs=1e-12)


GSM8K_ACCURACY = [  # (raw completion, correct under the official math_eval parser)
    ("<answer>\\boxed{72}</answer>" + EOT, True), ("\\boxed{72 dollars}", True), ("\\boxed{$72}", True),
    ("\\boxed{} \\boxed{...} \\boxed{x} \\boxed{72}", True),   # empty, dots and number-free boxes are skipped
    ("\\boxed{7} then \\boxed{72}", False),                      # the first usable box
    ("\\boxed{3+4 = 72}", False),                                # a box's first number
    ("<answer>3+4 = 72</answer>", True),                         # a tag's last number
    ("<answer>72</answer><answer>5</answer>", True),             # the first tag
    ("<answer>72.0</answer>", True), ("72", False), ("", False),
    ("\\boxed{7\n2}", False),                                    # a box must close on its line
    ("\\boxed{7\n \\boxed{72}", True),
]


@pytest.mark.parametrize("raw, correct", GSM8K_ACCURACY)
def test_gsm8k_accuracy_is_the_official_eval_parser(raw, correct):
    for name in ("gsm8k", "gsm8k-xml"):
        assert R.get_task(name).accuracy(raw, GSM, "chat")["correct"] == float(correct)


def test_gsm8k_loader(tmp_path):
    f = tmp_path / "gsm.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "step one\n#### 1,234"}) + "\n")
    assert R.get_task("gsm8k").load(str(f)) == [{"question": "q", "answer": "1,234", "value": 1234.0, "solution": "step one"}]
    f.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: the answer must end with '#### <number>'"):
        R.get_task("gsm8k").load(str(f))
    f.write_text(json.dumps({"question": None, "answer": "#### 3"}) + "\n")
    with pytest.raises(ValueError, match="line 1: missing field 'question'"):
        R.get_task("gsm8k").load(str(f))
    with pytest.raises(ValueError, match="no offline generator"):
        R.get_task("gsm8k").examples("train", 4, 0)


# ---------------------------------------------------------------- math500

LAST_BOXED = [  # (text, what the official last_boxed_only_string returns)
    ("\\boxed{1} then \\boxed{\\frac{a}{b}}", "\\boxed{\\frac{a}{b}}"),
    ("\\boxed 0 ... \\text{4}", "\\boxed 0 ... \\text{4}"),         # a space: up to '$', not to a brace
    ("$\\boxed 5$ and \\boxed{6}", "\\boxed 5"),                    # '\boxed ' anywhere wins
    ("\\boxed{unclosed", None), ("no box", "no box"), ("\\fbox{3}", "\\fbox{3}"),
    ("\\boxed}{x}", None),                                          # the count never returns to zero
]


@pytest.mark.parametrize("text, found", LAST_BOXED)
def test_last_boxed_is_the_official_one(text, found):
    assert R.last_boxed(text) == found


NORMALISED = [  # (answer, official strip_string), both variants unless noted
    ("\\frac9{19}", "\\frac{9}{19}"), ("\\sqrt5", "\\sqrt{5}"), ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"),
    ("\\left( 3, 4 \\right)", "(3,4)"), ("5\\text{ cm}", "5"), ("90^\\circ", "90"), ("10\\%", "10"), ("\\$5", "5"),
    ("k = 3", "3"), ("x^2 + 1", "x^2+1"), (".5", "\\frac{1}{2}"), ("3/4", "\\frac{3}{4}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\2\\end{pmatrix}"),  # '\\' becomes '\', nothing else
    ("\\text{(B)}", "\\text{(B)}"), ("-\\frac{3}{4}", "-\\frac{3}{4}"),
]


@pytest.mark.parametrize("answer, normal", NORMALISED)
def test_the_math_normaliser_is_the_official_strip_string(answer, normal):
    assert R.math_normalize(answer) == normal == R.math_normalize(answer, strict=True)


def test_the_eval_normaliser_falls_back_to_raw_comparison_where_the_official_one_raises():
    for raw in ("1\\text{ m}\\text{ s}", "2\\sqrt", "3\\frac", "x/y"):
        with pytest.raises(R._Unnormalisable):
            R.math_normalize(raw, strict=True)
        assert R.math_equiv(raw, raw, strict=True) and not R.math_equiv(raw, raw + " ", strict=True)
    assert R.math_normalize("2\\sqrt") == "2\\sqrt" and R.math_normalize("x/y") == "x/y"


def math_example(answer):
    solution = f"So the answer is $\\boxed{{{answer}}}$."
    return {"problem": "p", "answer": answer, "solution": solution, "reward_answer": R.boxed_content(solution)}


MATH_REWARD = [  # (text, reference, official math_xml reward)
    ("<answer>\n\\boxed{\\frac12}\n</answer>", "\\frac{1}{2}", 2.0 + 1.0),
    ("<answer>\n\\frac12\n</answer>", "\\frac{1}{2}", 2.0 + 0.75),      # no box: the whole span, normalised
    ("<answer>\n\\boxed{3}\n</answer>", "4", 0.0 + 1.0),
    ("\\boxed{4}", "4", 2.0 + 0.5),                                     # no tag: the whole text
    ("<answer>\\boxed{4}</answer> \\boxed{5}", "4", 2.0 + 1.0),         # inside the first span
    ("no answer", "4", 0.25),
]


@pytest.mark.parametrize("text, reference, reward", MATH_REWARD)
def test_math_training_reward_is_the_official_math_xml(text, reference, reward):
    assert R.get_task("math500").reward(text, math_example(reference), "chat") == reward


MATH_ACCURACY = [  # (raw, reference, correct under the official math_eval parser)
    ("\\boxed{\\frac12}" + EOT, "\\frac{1}{2}", True), ("so \\boxed 0 ... \\text{4}", "4", False),
    ("<answer>\\frac{1}{2}</answer>", "\\frac{1}{2}", False),         # no box: the whole text is the answer
    ("<answer>\\boxed{\\frac{1}{2}}</answer>" + EOT, "\\frac{1}{2}", True),
    ("\\boxed{unclosed <answer>\\box{7}</answer>", "7", True),          # unbalanced: the tag, and \box{} in it
    ("\\boxed{}<answer>7</answer>", "7", True),                         # an empty box: the tag
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\boxed{5\\text{ cm}}", "5", True), ("", "5", False),
]


@pytest.mark.parametrize("raw, reference, correct", MATH_ACCURACY)
def test_math_accuracy_is_the_official_eval_parser(raw, reference, correct):
    assert R.get_task("math500").accuracy(raw, math_example(reference), "chat")["correct"] == float(correct)


def test_math500_loader(tmp_path):
    task = R.get_task("math500")
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"problem": "p", "solution": "thus \\boxed{7}"}) + "\n" +
                 json.dumps({"problem": "p", "solution": "thus \\boxed{14/2}", "answer": "7"}) + "\n")
    rows = task.load(str(f))
    assert [(r["answer"], r["reward_answer"]) for r in rows] == [("7", "7"), ("7", "14/2")]
    f.write_text(json.dumps({"problem": "p", "solution": "no box \\boxed{"}) + "\n")
    with pytest.raises(ValueError, match="line 1: no 'answer' field"):
        task.load(str(f))


# ---------------------------------------------------------------- linear-time scanners = the regexes they replace

def test_the_scanners_return_what_the_official_regexes_return():
    """Each scanner against the plain regex it replaces, on short random strings of the characters
    that matter (where the regex is fast)."""
    rng = random.Random(1)
    pieces = ["<answer>", "</answer>", "```", "\n", " ", "1234567890123456", "7", "x", EOT, EOS, "\\boxed{", "}", "{",
              "\\boxed ", "$", "-", ".", "5", "<reasoning>", "</reasoning>", "\n<answer>\n", "\n</answer>", "The answer is ",
              "#### ", "\\box{", "1.2", "..", "٣", "²", "a", "_"]
    regex = {
        "spans": lambda t: re.findall(r"<answer>(.*?)</answer>", t, re.DOTALL),
        "gsm_last": lambda t: (re.findall(r"(-?[0-9]+)", t) or [None])[-1],
        "numbers_last": lambda t: (re.findall(r"-?\d+\.?\d*", t) or [None])[-1],
        "numbers_first": lambda t: (re.findall(r"-?\d+\.?\d*", t) or [None])[0],
        "soft": lambda t: bool(re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", t, re.DOTALL)),
        "strict": lambda t: bool(re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", t, re.DOTALL)),
        "box_tag": lambda t: (lambda m: m.group(1).strip() if m else None)(re.search(r"\\box\{(.+?)\}", t)),
    }
    mine = {
        "spans": R.tag_spans, "gsm_last": lambda t: R.reversed_search(R._LAST_INTEGER_REVERSED, t),
        "numbers_last": R.last_number, "numbers_first": R.first_number,
        "soft": lambda t: R.xml_format_terms(t)[1] == 0.5, "strict": lambda t: R.xml_format_terms(t)[2] == 0.5,
        "box_tag": R.first_box_tag,
    }
    patterns = [r"<answer>.*?```\s*([\d\s]+)```", r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
                r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", r".*?(\d{16})\s*</answer>", r"\b(\d{16})\b"]
    for _ in range(4000):
        t = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        for name in regex:
            assert mine[name](t) == regex[name](t), (name, t)
        expected = ""
        for p in patterns:  # the official sudoku chain
            m = re.search(p, t, re.DOTALL)
            if m and m.group(1).strip():
                expected = re.sub(r"\s", "", m.group(1).strip())
                break
        assert R.sudoku_eval_answer(t) == expected, t


# ---------------------------------------------------------------- every task

def test_unknown_task_and_style_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown task 'chess'; known tasks: \['code', 'countdown'"):
        R.get_task("chess")
    with pytest.raises(ValueError, match="has no 'tiny' format"):
        R.get_task("gsm8k").prompt(GSM, "tiny")


def examples_of_every_task():
    yield "sudoku", R.get_task("sudoku").examples("test", 3, 0)
    yield "countdown", R.get_task("countdown").examples("test", 3, 0)
    yield "gsm8k", [GSM]
    yield "gsm8k-xml", [GSM]
    yield "math500", [math_example("\\frac{1}{2}")]


MAX_OF_REFERENCE = {"sudoku": 1.0, "countdown": 1.0, "gsm8k": 1.0, "math500": 3.0,
                    "gsm8k-xml": 0.5 - 0.013 + 0.5 + 0.5 + 0.5 + 2.0}  # the reference ends with a newline


@pytest.mark.parametrize("name, examples", list(examples_of_every_task()))
def test_the_reference_completion_earns_the_maximum_and_is_correct(name, examples):
    task = R.get_task(name)
    for style in task.styles:
        for ex in examples:
            ref = task.reference(ex, style)
            g = task.grade(ref, ref, ex, style)
            assert g["reward"] == pytest.approx(MAX_OF_REFERENCE[name]) and g["correct"] == g["total"] > 0
            assert isinstance(task.prompt(ex, style), str)
            json.dumps(ex)  # examples are plain JSON


def hostile_strings(n, seed=0):
    rng = random.Random(seed)
    fixed = ["", " ", "<answer>", "</answer>", "<answer><answer></answer>", "<answer>" * 1000, "\\boxed{" * 500,
             "__import__('os').system('echo hi')", "1/0", "9**9**9", "<answer>9**9**9</answer>", "<answer>99**99**99</answer>",
             "<answer>" + "(" * 5000 + "</answer>", "<answer>" + "9" * 100000 + "</answer>", "\x00\x01\ud7ff",
             "💥" * 1000, "```python\n```", "<answer>1/0</answer>", "<answer>3*5+7=22=23</answer>", "x" * 200000,
             "\\boxed{\\frac1" + "9" * 5000 + "}", "\\boxed{" + "{" * 3000, "<answer>" + "-" * 5000 + "3</answer>",
             "\\boxed{1/" + "9" * 5000 + "}", "The answer is " + "9" * 5000, "\\boxed{" + "1." * 3000 + "}"]
    alphabet = list("0123456789+-*/()<>=/answer{}\\boxed .,#$\n") + ["<answer>", "</answer>", "\\boxed{", "é", "∑", "²",
                                                                      "<reasoning>\n", "\n</answer>", "\\frac", "\\sqrt"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(n - len(fixed))]


@pytest.mark.parametrize("name, examples", list(examples_of_every_task()))
def test_verifiers_never_raise_and_stay_in_range_on_10000_hostile_strings(name, examples):
    task = R.get_task(name)
    lo, hi = task.reward_range
    for text in hostile_strings(10000):
        for style in task.styles:
            r = task.reward(text, examples[0], style)
            assert isinstance(r, float) and lo <= r <= hi
            a = task.accuracy(text, examples[0], style)
            assert 0 <= a["correct"] <= a["total"]
