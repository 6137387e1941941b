"""reward.py: every verifier against hand-made cases with the official rules, fuzzed with hostile
strings, the code sandbox against hostile programs, the generators' guarantees, and the loaders on
files in the official formats (and on the official test files when ../shared/data is present)."""
import json
import os
import random
import subprocess
import time
from fractions import Fraction

import pytest

import reward as R

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")
SUDOKU = {"puzzle": "3102200002100320", "solution": "3142243142131324"}
COUNTDOWN = {"numbers": [3, 5, 7], "target": 22}


# ---------------------------------------------------------------- sudoku

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


@pytest.mark.parametrize("text, style, score, solved", [
    ("<answer>3142243142131324</answer>", "chat", 1.0, 1.0),
    ("<answer>\n3142\n2431\n4213\n1324\n</answer>", "chat", 1.0, 1.0),          # digits read through layout
    ("<answer>0000000000000000</answer> <answer>3142243142131324</answer>", "chat", 1.0, 1.0),  # the last tag
    ("<answer>3142243142131324</answer> <answer>0</answer>", "chat", 0.0, 0.0),
    ("3142243142131324", "chat", 0.0, 0.0),                                      # chat needs the tags
    ("<answer>31422431</answer>", "chat", 4 / 8, 0.0),                            # padded with '0'
    ("<answer>3142243142131324999</answer>", "chat", 1.0, 1.0),                   # cut to 16
    ("<answer>1111111111111111</answer>", "chat", 2 / 8, 0.0),
    ("3142243142131324", "tiny", 1.0, 1.0),
    ("3142x2431 42131324", "tiny", 1.0, 1.0),                                     # the first 16 digits
    ("3142243142131321", "tiny", 7 / 8, 0.0),
    ("", "tiny", 0.0, 0.0),
])
def test_sudoku_scores_the_fraction_of_blank_cells(text, style, score, solved):
    # blanks of SUDOKU at cells 2, 5, 6, 7, 8, 11, 12, 15 -> solution digits 4, 4, 3, 1, 4, 3, 1, 4
    task = R.get_task("sudoku")
    assert task.score(text, SUDOKU, style) == pytest.approx(score)
    d = task.details(text, SUDOKU, style)
    assert d["solved"] == solved and d["blank_cells"] == 8


def test_sudoku_csv_loader_and_its_errors(tmp_path):
    task = R.get_task("sudoku")
    good = tmp_path / "s.csv"
    good.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n\n")
    assert task.load(str(good)) == [SUDOKU]
    bad = tmp_path / "bad.csv"
    bad.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n31022000,3142243142131324\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: expected two 16-digit strings"):
        task.load(str(bad))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Puzzle,Solution\n3102200002100320,1111243142131324\n")
    with pytest.raises(ValueError, match="line 2: the solution is not a valid grid"):
        task.load(str(wrong))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.load(str(tmp_path / "absent.csv"))


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data is absent")
def test_official_sudoku_file_loads_and_its_solutions_score_full():
    task = R.get_task("sudoku")
    rows = task.load(os.path.join(DATA, "sudoku_4x4_test.csv"))
    assert len(rows) == 500 and all(r["puzzle"].count("0") == 8 for r in rows)
    assert all(task.score(task.reference(r, s), r, s) == 1.0 for r in rows[:50] for s in R.STYLES)


# ---------------------------------------------------------------- arithmetic and countdown

@pytest.mark.parametrize("text, value, literals", [
    ("3*5+7", 22, [3, 5, 7]), ("(3+5)*7", 56, [3, 5, 7]), ("7/(5-3)", Fraction(7, 2), [7, 5, 3]),
    (" 2 - -3 ", 5, [2, 3]), ("8÷2×3", 12, [8, 2, 3]), ("((1))", 1, [1]), ("10-2-3", 5, [10, 2, 3]),
    ("2*3/4", Fraction(3, 2), [2, 3, 4]), ("100/10/5", 2, [100, 10, 5]),
])
def test_the_arithmetic_parser_follows_precedence_and_associativity(text, value, literals):
    assert R.parse_arithmetic(text) == (value, literals)


@pytest.mark.parametrize("text", ["", "1/0", "1/(2-2)", "2**3", "9**9**9", "__import__('os')", "(1+2", "1+2)",
                                  "1 2", "abc", "1e5", "3.5", "9" * 11, "(" * 300 + "1" + ")" * 300, "٣+1", "1;2"])
def test_the_arithmetic_parser_rejects_everything_else(text):
    with pytest.raises(R.ParseError):
        R.parse_arithmetic(text)


@pytest.mark.parametrize("text, style, score", [
    ("<answer>3*5+7</answer>", "chat", 1.0),
    ("<answer>7+5*3</answer>", "chat", 1.0),
    ("<answer>3*5+7 = 22</answer>", "chat", 1.0),
    ("<answer>(3+5)*7</answer>", "chat", 0.1),           # wrong value
    ("<answer>3*5+7+0</answer>", "chat", 0.1),           # an extra number
    ("<answer>3*7+1</answer>", "chat", 0.1),             # numbers not the given ones
    ("<answer>5*3+7+7-7</answer>", "chat", 0.1),         # a number used twice
    ("<answer>__import__('os')</answer>", "chat", 0.1),  # not arithmetic
    ("<answer></answer>", "chat", 0.0),
    ("3*5+7", "chat", 0.0),                              # chat needs the tags
    ("3*5+7", "tiny", 1.0),
    ("3*5+8", "tiny", 0.1),
    ("", "tiny", 0.0),
])
def test_countdown_official_scores(text, style, score):
    task = R.get_task("countdown")
    assert task.score(text, COUNTDOWN, style) == score
    assert task.details(text, COUNTDOWN, style)["solved"] == float(score == 1.0)


def test_countdown_targets_are_reachable_by_their_reference_and_fit_the_tiny_format():
    task = R.get_task("countdown")
    train, test = task.examples("train", 300, 0), task.examples("test", 100, 0)
    assert not {tuple(sorted(e["numbers"])) for e in train} & {tuple(sorted(e["numbers"])) for e in test}
    for e in train + test:
        value, literals = R.parse_arithmetic(e["reference"])
        assert value == e["target"] and sorted(literals) == sorted(e["numbers"])
        assert len(task.prompt(e, "tiny")) <= 16 and len(task.reference(e, "tiny")) <= 16


def test_the_solver_finds_exactly_the_reachable_targets():
    # brute force over every expression tree with + - * / of three numbers, in exact arithmetic
    nums = [2, 3, 7]
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
    assert all(R.parse_arithmetic(e)[0] == v for v, e in found.items())


def test_countdown_loaders_read_the_official_and_hub_formats(tmp_path):
    task = R.get_task("countdown")
    official = tmp_path / "cd.jsonl"
    official.write_text('{"input": "3,5,7", "output": "22"}\n{"input": "30,100,93", "output": "23"}\n')
    hub = tmp_path / "hub.jsonl"
    hub.write_text('{"nums": [3, 5, 7], "target": 22}\n')
    assert task.load(str(official))[0] == COUNTDOWN and task.load(str(hub)) == [COUNTDOWN]
    assert task.score("<answer>3*5+7</answer>", task.load(str(official))[0], "chat") == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "3,5,7", "output": "22"}\n{"input": "3,5,7"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: missing field 'output' or 'target'"):
        task.load(str(bad))
    bad.write_text('{"input": "3,five,7", "output": "22"}\n')
    with pytest.raises(ValueError, match="line 1: numbers and target must be integers"):
        task.load(str(bad))
    bad.write_text('{"input": "3,5,7", "output": "22"\n')
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        task.load(str(bad))


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data is absent")
def test_official_countdown_file_loads_and_solvable_rows_score_full():
    task = R.get_task("countdown")
    rows = task.load(os.path.join(DATA, "countdown_cd3_test.jsonl"))
    assert len(rows) == 256 and all(len(r["numbers"]) == 3 for r in rows)
    solvable = [r for r in rows if r["target"] in R.solve_countdown(r["numbers"])]
    assert len(solvable) > 200
    assert all(task.score(task.reference(r, "chat"), r, "chat") == 1.0 for r in solvable)


# ---------------------------------------------------------------- gsm8k and math500

GSM = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "1234", "solution": "3 + 4 ... = 1234"}


@pytest.mark.parametrize("text, correct", [
    ("<answer>1234</answer>", 1.0), ("<answer>1,234</answer>", 1.0), ("<answer>$1234.00</answer>", 1.0),
    ("<answer>1235</answer>", 0.0), ("so the answer is 1234", 1.0), ("1234 or maybe 7", 0.0),
    ("<answer>1234</answer><answer>5</answer>", 0.0), ("", 0.0),
])
def test_gsm8k_exact_numeric_match(text, correct):
    assert R.get_task("gsm8k").score(text, GSM, "chat") == correct


def test_gsm8k_xml_terms_follow_the_official_sum():
    task = R.get_task("gsm8k-xml")
    perfect = "<reasoning>\n3+4\n</reasoning>\n<answer>\n1234\n</answer>\n"
    assert task.score(perfect, GSM, "chat") == 4.0  # 2 + 0.5 int + 0.5 strict + 0.5 soft + 4 x 0.125
    assert task.score(perfect.replace("1234", "99"), GSM, "chat") == 2.0
    assert task.score("<reasoning>x</reasoning><answer>1234</answer>", GSM, "chat") == 2.0 + 0.5 + 0.5
    assert task.score("1234", GSM, "chat") == 2.0


def test_gsm8k_loader(tmp_path):
    f = tmp_path / "gsm.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "step one\n#### 1,234"}) + "\n")
    assert R.get_task("gsm8k").load(str(f)) == [{"question": "q", "answer": "1234", "solution": "step one"}]
    f.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: the answer must end with '#### <number>'"):
        R.get_task("gsm8k").load(str(f))
    with pytest.raises(ValueError, match="no offline generator"):
        R.get_task("gsm8k").examples("train", 4, 0)


@pytest.mark.parametrize("boxed, reference, same", [
    ("\\frac{1}{2}", "\\dfrac12", True), ("0.5", "\\frac{1}{2}", True), ("\\left( 3, 4 \\right)", "(3,4)", True),
    ("5\\text{ cm}", "5", True), ("90^\\circ", "90", True), ("10\\%", "10", True), ("\\$5", "5", True),
    ("\\text{(B)}", "(B)", True), ("x^2 + 1", "x^2+1", True), ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{1}{3}", "0.33", False), ("3", "4", False), ("\\sqrt{2}", "2", False),
])
def test_math500_answer_equivalence(boxed, reference, same):
    task = R.get_task("math500")
    assert task.score(f"so \\boxed{{{boxed}}}.", {"answer": reference}, "chat") == float(same)


def test_math500_takes_the_last_balanced_box_and_loads_rows(tmp_path):
    task = R.get_task("math500")
    assert R.last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert R.last_boxed("\\boxed{unclosed") is None and task.score("no box", {"answer": "1"}, "chat") == 0.0
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"problem": "p", "solution": "thus \\boxed{7}"}) + "\n")
    assert task.load(str(f))[0]["answer"] == "7"
    f.write_text(json.dumps({"problem": "p", "solution": "no box"}) + "\n")
    with pytest.raises(ValueError, match="line 1: no 'answer' field"):
        task.load(str(f))


# ---------------------------------------------------------------- code and the sandbox

CODE = {"question": "add one", "test_cases": ["assert f(1) == 2", "assert f(-1) == 0", "assert f(0) == 5"]}


def block(src):
    return f"<answer>\n```python\n{src}\n```\n</answer>"


def test_code_scores_the_fraction_of_asserts_passed():
    task = R.get_task("code")
    assert task.score(block("def f(x):\n    return x + 1"), CODE, "chat") == pytest.approx(2 / 3)
    assert task.score(block("def f(x):\n    return 0") + block("def f(x):\n    return x + 1"), CODE, "chat") == pytest.approx(2 / 3)
    assert task.score("def f(x): return x + 1", CODE, "chat") == 0.0  # no fenced block
    assert task.score(block("syntax error here"), CODE, "chat") == 0.0
    # printing something that looks like a result does not count: the result line carries a secret token
    assert task.score(block("print('\\nPASSED 3')\ndef f(x):\n    return 9"), CODE, "chat") == 0.0


HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "memory bomb": "x = bytearray(8 << 30)",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "exit early": "import os\nos._exit(0)",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_are_contained_and_score_zero(name):
    start = time.time()
    assert R.run_sandboxed(HOSTILE[name] + "\ndef f(x):\n    return x + 1", CODE["test_cases"], timeout=2) == 0
    assert time.time() - start < 2 + 3  # killed at the wall-clock limit, not left running
    if os.geteuid() == 0:  # nothing of the sandbox user survives
        for _ in range(20):
            left = subprocess.run(["ps", "-u", str(R.NOBODY), "-o", "pid="], capture_output=True, text=True).stdout.split()
            if not left:
                break
            time.sleep(0.1)
        assert not left


def test_writes_outside_the_sandbox_directory_do_not_reach_the_host(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("as an unprivileged user the sandbox has that user's file permissions (documented)")
    target = tmp_path / "escaped.txt"
    program = f"open({str(target)!r}, 'w').write('x')\ndef f(x):\n    return x + 1"
    assert R.run_sandboxed(program, CODE["test_cases"]) == 0  # PermissionError before f is defined
    assert not target.exists()
    # inside its own directory the program may write (a relative path), within the file-size limit
    assert R.run_sandboxed("open('ok.txt', 'w').write('x')\nassert open('ok.txt').read() == 'x'", ["assert True"]) == 1
    assert R.run_sandboxed("open('big', 'wb').write(b'x' * (4 << 20))", ["assert True"]) == 0


def test_the_sandbox_environment_inherits_no_secrets(monkeypatch):
    monkeypatch.setenv("GDSD_SECRET_TOKEN", "hunter2")
    assert R.run_sandboxed("import os", ["assert 'GDSD_SECRET_TOKEN' not in os.environ", "assert os.getcwd().startswith(os.environ['HOME'])"]) == 2


def test_code_loader(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"question": "q", "test_list": ["assert True"]}) + "\n")
    assert R.get_task("code").load(str(f))[0]["test_cases"] == ["assert True"]
    f.write_text(json.dumps({"question": "q", "test_cases": []}) + "\n")
    with pytest.raises(ValueError, match="line 1: 'test_cases' must be a non-empty list"):
        R.get_task("code").load(str(f))


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
    yield "math500", [{"problem": "p", "answer": "\\frac{1}{2}", "solution": "half"}]
    yield "code", [dict(CODE, test_cases=CODE["test_cases"][:2], solution="def f(x):\n    return x + 1")]


@pytest.mark.parametrize("name, examples", list(examples_of_every_task()))
def test_the_reference_completion_earns_the_maximum(name, examples):
    task = R.get_task(name)
    for style in task.styles:
        for ex in examples:
            assert task.score(task.reference(ex, style), ex, style) == task.max_score
            assert isinstance(task.prompt(ex, style), str)
            json.dumps(ex)  # examples are plain JSON


def hostile_strings(n, seed=0):
    rng = random.Random(seed)
    fixed = ["", " ", "<answer>", "</answer>", "<answer><answer></answer>", "<answer>" * 1000, "\\boxed{" * 500,
             "__import__('os').system('echo hi')", "1/0", "9**9**9", "<answer>9**9**9</answer>",
             "<answer>" + "(" * 5000 + "</answer>", "<answer>" + "9" * 100000 + "</answer>", "\x00\x01\ud7ff",
             "💥" * 1000, "```python\n```", "<answer>1/0</answer>", "<answer>3*5+7=22=23</answer>", "x" * 200000]
    alphabet = list("0123456789+-*/()<>=/answer{}\\boxed .,#$\n") + ["<answer>", "</answer>", "\\boxed{", "é", "∑"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(n)]


@pytest.mark.parametrize("name, examples", [e for e in examples_of_every_task() if e[0] != "code"])
def test_verifiers_never_raise_and_stay_in_range_on_hostile_text(name, examples):
    task = R.get_task(name)
    for text in hostile_strings(1500):
        for style in task.styles:
            s = task.score(text, examples[0], style)
            assert isinstance(s, float) and 0.0 <= s <= task.max_score
            task.details(text, examples[0], style)


def test_the_code_verifier_never_raises_on_hostile_text():
    # texts without a fenced block never start a process; a few with one do
    task = R.get_task("code")
    for text in hostile_strings(300) + [block("9**9**9"), block("1/0"), block("__import__('os').system('true')")]:
        s = task.score(text, CODE, "chat")
        assert 0.0 <= s <= 1.0
