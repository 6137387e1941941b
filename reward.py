"""reward.py — the tasks of GDSD and their two scorers: the training reward and the evaluation accuracy.

Each task scores a completion twice, each time with the semantics of one function of the official
GDSD repository (github.com/GaryBall/GDSD), so that rewards and accuracies compare with the paper:

    reward(text, ex, style)    what train.py optimises: gdsd/rewards.py term by term, same maximum,
                               clamped to `task.reward_range`.
    accuracy(raw, ex, style)   what eval.py reports: the parsers behind the published tables
                               (eval/parse_and_get_acc.py for sudoku and countdown,
                               math_eval/parse_and_get_acc.py for GSM8K and MATH).
    grade(text, raw, ex, style)  both at once (a code completion runs once), for eval.py.

They read different text, as the official code does: the training reward reads the whole completion
decoded with special tokens dropped (`text`), the evaluation parser the raw completion with special
tokens such as <|eot_id|> kept (`raw`). The tiny model's compact style has no official scorer: its
completion is read as the content of the answer tags, and `raw` is `text`.

    task       reward (range)                                           accuracy (per completion)
    sudoku     blank cells right in the last <answer> (0..1)            cells right / blanks (micro-average)
    countdown  1 right, 0.1 an <answer> that is not, 0 none (0..1)      the equation reaches the target
    gsm8k      the final number matches (0..1)                          the boxed / tagged number matches
    gsm8k-xml  2 right + int 0.5 + strict 0.5 + soft 0.5 + tag count    the same as gsm8k
               0.5 minus 0.001 per character after the tags (-4..4)
    math500    2 equivalent + 0.5·(<answer> present + \\boxed inside)    the boxed answer is equivalent
               (0.25..3)
    code       format (0 / 0.5 / 1) + fraction of tests passed,         every test passes (the official
               counted only when the format is right (0..2)             code eval is lm-eval's, not here)

Departures from the official code are made only where its behaviour is unsafe or unbounded, and each
is stated once, in the function that makes it (search for "Departure"): no Python `eval` of model
text (a parser with Python's semantics instead), no exponent bombs, linear-time parsing of any input,
and a code sandbox the scored program cannot reach (see `run_tests`).

How to use:
    task = get_task("sudoku")
    train, test = task.examples("train", 1000, seed=0), task.examples("test", 256, seed=0)
    test = task.load("sudoku_4x4_test.csv")                    # or the official test file
    prompt = task.prompt(test[0], "chat")                      # "tiny": the tiny model's compact format
    r = task.reward(completion_text, test[0], "chat")          # float in task.reward_range
    g = task.grade(completion_text, raw_text, test[0], "chat")  # {"reward", "correct", "total", "answered", ...}

Imports only the standard library.
"""
import ast
import builtins
import inspect
import itertools
import json
import math
import os
import random
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

STYLES = ("chat", "tiny")
FORMAT = "Respond in this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"

# ----------------------------------------------------------------------------------------------
# Text scanning in linear time. The official parsers are regexes such as <answer>(.*?)</answer>;
# Python's engine rescans to the end of the text for every opening that never closes (quadratic:
# 10 s for 128 kB of "<answer>"). These helpers return exactly what those regexes return, found
# with str.find and with regexes that cannot backtrack over the same text twice.

def tag_spans(text, open_tag="<answer>", close_tag="</answer>", first=False):
    """Contents of every `open…close` span, as re.findall(open(.*?)close, DOTALL) returns them
    (leftmost, non-overlapping); only the first when `first` (re.search)."""
    out, pos = [], 0
    while (start := text.find(open_tag, pos)) >= 0:
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:  # no later opening can close either
            break
        out.append(text[start + len(open_tag):end])
        if first:
            break
        pos = end + len(close_tag)
    return out


def last_answer(text):
    """Content of the last <answer>…</answer>, stripped, or None (gdsd/rewards.py's extract_solution):
    tag_spans(text)[-1], walking the same pairs without copying them."""
    last, pos = None, 0
    while (start := text.find("<answer>", pos)) >= 0 and (end := text.find("</answer>", start + 8)) >= 0:
        last, pos = (start + 8, end), end + 9
    return text[last[0]:last[1]].strip() if last else None


def reversed_search(pattern, text):
    """The last match of `pattern` in `text`, found as the first match of the reversed pattern in the
    reversed text (for "the last number" without listing every number)."""
    m = pattern.search(text[::-1])
    return m.group(0)[::-1] if m else None


_DIGIT = re.compile(r"\d")
_NUMBER_BODY = re.compile(r"\d+\.?\d*")
_DIGITS_AND_DOTS = re.compile(r"[\d.]*")


def first_number(text):
    """The first match of -?\\d+\\.?\\d* (the regex would retry at every position: a literal-free
    pattern costs ~50 ns a character in Python's engine; a bare digit class is searched much faster)."""
    m = _DIGIT.search(text)
    if m is None:
        return None
    i = m.start()
    return ("-" if i and text[i - 1] == "-" else "") + _NUMBER_BODY.match(text, i).group()


def last_number(text):
    """The last of re.findall(r"-?\\d+\\.?\\d*", text), without listing them: it holds the last digit,
    in the chain d.d.d… of digit runs joined by single dots that ends there; findall pairs that
    chain's runs from its start (d.d, d.d, …), so the chain's length says which runs it is."""
    rev = text[::-1]
    m = _DIGIT.search(rev)
    if m is None:
        return None
    end = len(text) - m.start()  # one past the last digit
    segment = _DIGITS_AND_DOTS.match(rev, m.start()).group()[::-1]
    chain = segment[segment.rfind("..") + 2:].lstrip(".") if ".." in segment else segment.lstrip(".")
    start = end - len(chain)
    runs = chain.split(".")
    last = ".".join(runs[-2:]) if len(runs) % 2 == 0 else runs[-1] + ("." if text[end:end + 1] == "." else "")
    return ("-" if len(runs) <= 2 and start and text[start - 1] == "-" else "") + last


def digits_of(text, limit):
    """The first `limit` characters of `text` for which str.isdigit() holds (a decimal digit, or a
    digit such as '²' that is not decimal), found at C speed."""
    if text.isascii():
        return text.encode().translate(None, _ASCII_NON_DIGITS)[:limit].decode()
    digits = [c for c in set(text) if c.isdigit()]  # the distinct characters: few, even in long text
    if not digits:
        return ""
    pattern = re.compile("[" + re.escape("".join(digits)) + "]")
    return "".join(m.group() for m in itertools.islice(pattern.finditer(text), limit))


_ASCII_NON_DIGITS = bytes(c for c in range(128) if not chr(c).isdigit())


# ----------------------------------------------------------------------------------------------
# Data files

def read_rows(path, kind):
    """Lines of a local data file, with a clear error if it is absent or not UTF-8."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} data file {path!r} does not exist; pass the path of a local copy")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None


def read_jsonl(path, kind, required):
    """(line number, dict) of every non-empty JSONL line, checking the required keys."""
    rows = []
    for n, line in enumerate(read_rows(path, kind), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        for keys in required:  # each entry: a key or a tuple of alternative keys
            alternatives = keys if isinstance(keys, tuple) else (keys,)
            if not any(row.get(k) is not None for k in alternatives):
                raise ValueError(f"{path}, line {n}: missing field {' or '.join(map(repr, alternatives))} "
                                 f"(a {kind} row needs {required})")
        rows.append((n, row))
    if not rows:
        raise ValueError(f"{path}: no {kind} rows (the file is empty)")
    return rows


def text_field(row, keys, path, n):
    """The first of `keys` present in `row`, which must be a string."""
    value = next(row[k] for k in keys if row.get(k) is not None)
    if not isinstance(value, str):
        raise ValueError(f"{path}, line {n}: field {keys[0]!r} must be a string, got {type(value).__name__}")
    return value


class Task:
    """A task: examples, prompts in two styles, a reference completion and the two scorers."""
    name = ""
    styles = ("chat",)
    reward_range = (0.0, 1.0)

    def _check_style(self, style):
        if style not in self.styles:
            raise ValueError(f"task {self.name!r} has no {style!r} format (it has {list(self.styles)}); "
                             "the tiny model knows sudoku and countdown only")

    def examples(self, split, n, seed, exclude=()):
        raise ValueError(f"task {self.name!r} has no offline generator: pass a local file (--data PATH) "
                         f"in its format; see the README's 'Tasks and data'")

    def key(self, ex):
        """What a training example must not share with a held-out one (see `examples(exclude=)`)."""
        return json.dumps(ex, sort_keys=True)

    def reward(self, text, ex, style):
        lo, hi = self.reward_range
        return min(max(float(self._reward(text, ex, style)), lo), hi)

    def grade(self, text, raw, ex, style):
        """Everything eval.py reports for one completion: the training reward on `text` and the
        evaluation parser's verdict on `raw` ("correct" out of "total", micro-averaged; "answered":
        the parser found an answer at all)."""
        return {"reward": self.reward(text, ex, style), **self.accuracy(raw, ex, style)}


# ----------------------------------------------------------------------------------------------
# Sudoku 4×4

def valid_grid(g):
    """16 digits 1-4 whose rows, columns and 2×2 boxes each hold 1, 2, 3, 4."""
    if len(g) != 16 or set(g) - set("1234"):
        return False
    units = [[4 * r + c for c in range(4)] for r in range(4)] + [[4 * r + c for r in range(4)] for c in range(4)]
    units += [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
    return all(len({g[i] for i in u}) == 4 for u in units)


def all_grids():
    """The 288 valid 4×4 sudoku grids, in lexicographic order (row by row, keeping only rows that clash
    with no column and, on rows 2 and 4, no box of the row above)."""
    grids = [""]
    for r in range(4):
        grids = [g + row for g in grids for row in map("".join, itertools.permutations("1234"))
                 if all(row[c] not in g[c::4] for c in range(4))
                 and (r % 2 == 0 or len({*g[-4:-2], *row[:2]}) == len({*g[-2:], *row[2:]}) == 4)]
    return grids


def sudoku_cells(guess, ex):
    """(blank cells the guess fills right, blank cells): the guess padded with '0' / cut to 16."""
    guess = guess.ljust(16, "0")[:16]
    blanks = [i for i, c in enumerate(ex["puzzle"]) if c == "0"]
    return sum(guess[i] == ex["solution"][i] for i in blanks), len(blanks)


_STOP = ("<|eot_id|>", "<|endoftext|>")  # LLaDA's end-of-turn and end-of-text, as the eval parser knows them
_FENCED_RUN = re.compile(r"```([\d\s]+)```")
_WHITESPACE = re.compile(r"\s*")
_SIXTEEN_BEFORE_CLOSE_REVERSED = re.compile(r">rewsna/<\s*(\d{16})")
_SIXTEEN_WORD = re.compile(r"\b(\d{16})\b")
_ASCII_CLASSES = bytes.maketrans(bytes(range(128)), bytes(ord("0") if chr(c).isdigit() else ord("a") if chr(c).isalnum()
                                                          or chr(c) == "_" else ord(" ") for c in range(128)))


def sudoku_eval_answer(raw):
    """The grid string the official eval parser reads (eval/parse_and_get_acc.py): the first of five
    patterns whose capture is not blank, whitespace removed. In its order: digits fenced by ``` after
    the first <answer>; the first <answer> up to a stop token or </answer>; the text after the first
    </answer> up to a stop token or the end; 16 digits before a </answer>; a 16-digit word."""
    def fenced():
        a = raw.find("<answer>")
        m = _FENCED_RUN.search(raw, a + 8) if a >= 0 else None
        return m.group(1) if m else None

    def until_stop():
        a = raw.find("<answer>")
        ends = [e for e in (raw.find(t, a + 8) for t in _STOP + ("</answer>",)) if e >= 0] if a >= 0 else []
        return raw[a + 8:min(ends)] if ends else None

    def after_close():
        c = raw.find("</answer>")
        if c < 0:
            return None
        s = _WHITESPACE.match(raw, c + 9).end()
        end = len(raw) - 1 if raw.endswith("\n") and s < len(raw) else len(raw)  # `$` before a final newline
        return raw[s:min([e for e in (raw.find(t, s) for t in _STOP) if e >= 0] + [end])]

    def before_close():  # the first '</answer>' with 16 digits and spaces before it, read backwards
        last = None
        for last in _SIXTEEN_BEFORE_CLOSE_REVERSED.finditer(raw[::-1]):
            pass
        return last.group(1)[::-1] if last else None

    def word():  # \b(\d{16})\b; on ASCII text, a byte search over character classes
        if raw.isascii():
            i = (b" " + raw.encode().translate(_ASCII_CLASSES) + b" ").find(b" " + b"0" * 16 + b" ")
            return raw[i:i + 16] if i >= 0 else None
        m = _SIXTEEN_WORD.search(raw)
        return m.group(1) if m else None

    for pattern in (fenced, until_stop, after_close, before_close, word):
        found = pattern()
        if found is not None and found.strip():
            return "".join(found.split())
    return ""


class Sudoku(Task):
    name, styles = "sudoku", STYLES
    split_seed, test_grids = 1234, 58  # a fixed split: test solution grids never appear in training

    def __init__(self, blanks=8):
        self.blanks = blanks
        grids = all_grids()
        random.Random(self.split_seed).shuffle(grids)
        self.grids = {"test": grids[: self.test_grids], "train": grids[self.test_grids:]}

    def key(self, ex):
        return ex["solution"]

    def examples(self, split, n, seed, exclude=()):
        """n puzzles: a solution grid of the split (never one in `exclude`) and `blanks` random cells
        set to '0'."""
        if split not in self.grids:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        grids = [g for g in self.grids[split] if g not in set(exclude)]
        if not grids:
            raise ValueError(f"every {split} grid of the generator is excluded; exclude fewer held-out files")
        rng = random.Random(f"sudoku-{split}-{seed}")
        out = []
        for _ in range(n):
            sol = rng.choice(grids)
            holes = set(rng.sample(range(16), self.blanks))
            out.append({"puzzle": "".join("0" if i in holes else d for i, d in enumerate(sol)), "solution": sol})
        return out

    def load(self, path):
        """The official CSV: header `Puzzle,Solution`, then 16-character rows ('0' = blank)."""
        lines = read_rows(path, "sudoku")
        if not lines or lines[0].replace(" ", "").lower() != "puzzle,solution":
            got = lines[0][:40] if lines else ""
            raise ValueError(f"{path}, line 1: expected the header 'Puzzle,Solution', got {got!r}")
        out = []
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(re.fullmatch(r"[0-4]{16}", p) for p in parts):
                raise ValueError(f"{path}, line {n}: expected two 16-digit strings 'puzzle,solution', "
                                 f"got {line[:50]!r}")
            puzzle, sol = parts
            if not valid_grid(sol) or any(p != "0" and p != s for p, s in zip(puzzle, sol)):
                raise ValueError(f"{path}, line {n}: the solution is not a valid grid consistent with the puzzle")
            out.append({"puzzle": puzzle, "solution": sol})
        if not out:
            raise ValueError(f"{path}: no puzzles after the header")
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ex["puzzle"] + "="
        return ("Solve this 4x4 Sudoku. The puzzle is a 16-character string read row by row, left to right; "
                "'0' marks an empty cell. Fill every empty cell with a digit from 1 to 4 so that each row, each "
                "column and each of the four 2x2 boxes holds 1, 2, 3 and 4 exactly once.\n"
                f"Puzzle: {ex['puzzle']}\nGive the completed grid as 16 digits with no spaces inside the answer "
                f"tags.\n{FORMAT}")

    def reference(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ex["solution"]
        return ("<reasoning>\nEach blank takes the digit missing from its row, column and box.\n</reasoning>\n"
                f"<answer>\n{ex['solution']}\n</answer>")

    def _reward(self, text, ex, style):
        """gdsd/rewards.py reward_func_sudoku: the digits (str.isdigit) of the last <answer>, padded
        with '0' / cut to 16, scored on the blank cells; nothing to read, or no blank cell, is 0."""
        answer = text.strip() if style == "tiny" else last_answer(text)
        digits = digits_of(answer, 16) if answer is not None else ""
        right, blanks = sudoku_cells(digits, ex)
        return right / blanks if digits and blanks else 0.0

    def accuracy(self, raw, ex, style):
        """eval/parse_and_get_acc.py parse_sudoku_answers: correct cells over blank cells, summed over
        the test set before dividing (cell accuracy); "solved": every blank right."""
        guess = digits_of(raw.strip(), 16) if style == "tiny" else sudoku_eval_answer(raw)
        right, blanks = sudoku_cells(guess, ex) if guess else (0, sudoku_cells("", ex)[1])
        return {"correct": right, "total": blanks, "answered": float(bool(guess)),
                "solved": float(bool(guess) and right == blanks)}


# ----------------------------------------------------------------------------------------------
# Arithmetic with Python's semantics, without eval. The official countdown scorers check the
# characters against [\d+\-*/().\s] and then call Python's `eval`; this parser gives the same value
# (the same int / float / complex result of the same Python operators) or the same failure on every
# string of those characters, so the verdicts agree without running model text.

_ARITHMETIC_CHARS = re.compile(r"[\d+\-*/().\s]+")
_TOKEN = re.compile(r"[ \t\f]*(?:(\d+\.?\d*|\.\d+)|(\*\*|//|[-+*/()])|([\n\r])|(.))", re.ASCII | re.DOTALL)
MAX_POWER_BITS = 1 << 20  # Departure: a power whose exact integer result would be longer is refused
MAX_DEPTH = 1000          # unary operators / powers / parentheses nested deeper are refused


class ArithmeticError_(ValueError):
    """The string is not an arithmetic expression Python would evaluate to a number."""


def _power(a, b):
    """a ** b as Python computes it, except an integer result over MAX_POWER_BITS bits.
    Departure: Python would spend unbounded time and memory on 99**99**99 (an exponent bomb in model
    text); such a power is treated as an invalid expression (so never a right answer)."""
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and b * abs(a).bit_length() > MAX_POWER_BITS:
        raise ArithmeticError_("power too large")
    return a ** b


_BINARY = {"+": (1, lambda a, b: a + b), "-": (1, lambda a, b: a - b), "*": (2, lambda a, b: a * b),
           "/": (2, lambda a, b: a / b), "//": (2, lambda a, b: a // b), "**": (4, _power)}
_UNARY = {"+": lambda a: +a, "-": lambda a: -a}


def python_arithmetic(text):
    """The value Python's eval gives `text` (with no names available), or None where eval raises.

    The accepted language is Python's for these characters: integer literals without leading zeros
    (up to 4,300 digits, Python's limit), float literals such as 7. and .5, unary + and -, binary
    + - * / // and ** (right-associative, binding tighter than a unary minus on its left), parentheses
    (at most 200 deep, like CPython's tokenizer), spaces, tabs and form feeds anywhere, and newlines
    only inside parentheses; leading and trailing whitespace is stripped first, as the official code
    does. Anything else (another Unicode space or digit, '...', a call such as (3)(4), two numbers in
    a row) fails, as it does in Python. Operators are applied by Python itself, so ints stay exact,
    '/' rounds like Python and 1/0 fails like Python. Parsed by precedence climbing without
    recursion, so no input can exhaust the stack."""
    text = text.strip()
    if not text or not _ARITHMETIC_CHARS.fullmatch(text):
        return None
    try:
        return _evaluate(_tokens(text))
    except (ArithmeticError_, ArithmeticError, ValueError, TypeError):
        return None


def _tokens(text):
    """Numbers (int or float) and operator strings; raises on a character or layout Python rejects."""
    out, depth, pos = [], 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        number, op, newline, other = m.groups()
        pos = m.end()
        if number is not None:
            if "." in number:
                out.append(float(number))
            elif len(number) > 1 and number[0] == "0" and number.strip("0"):
                raise ArithmeticError_("leading zeros in an integer literal")
            elif len(number) > 4300:
                raise ArithmeticError_("integer literal over Python's 4300-digit limit")
            else:
                out.append(int(number))
        elif op is not None:
            depth += {"(": 1, ")": -1}.get(op, 0)
            if depth > 200:
                raise ArithmeticError_("too many nested parentheses")
            out.append(op)
        elif newline is not None:
            if depth <= 0:  # a line break outside parentheses ends the expression; more text follows
                raise ArithmeticError_("line break outside parentheses")
        elif other is not None and other.strip(" \t\f"):
            raise ArithmeticError_(f"unexpected {other!r}")
    return out


def _evaluate(tokens):
    """Precedence climbing over numbers and operators with explicit stacks (operands, operators)."""
    values, ops = [], []  # ops holds ("u", op) for unary, ("b", op) for binary, "(" for a parenthesis

    def reduce_top():
        kind, op = ops.pop()
        if kind == "u":
            values.append(_UNARY[op](values.pop()))
        else:
            b, a = values.pop(), values.pop()
            values.append(_BINARY[op][1](a, b))

    def precedence(entry):
        return 3 if entry[0] == "u" else _BINARY[entry[1]][0]

    expect_operand = True
    for tok in tokens:
        if expect_operand:
            if isinstance(tok, (int, float)):
                values.append(tok)
                expect_operand = False
            elif tok in ("+", "-"):
                ops.append(("u", tok))
            elif tok == "(":
                ops.append("(")
            else:
                raise ArithmeticError_(f"unexpected {tok!r}")
            if len(ops) > MAX_DEPTH:
                raise ArithmeticError_("nested too deeply")
        elif tok == ")":
            while ops and ops[-1] != "(":
                reduce_top()
            if not ops:
                raise ArithmeticError_("unbalanced ')'")
            ops.pop()
        elif tok in _BINARY:
            prec = _BINARY[tok][0]
            # left-associative operators reduce equal precedence first; ** is right-associative, and
            # a unary minus waiting on the left of ** applies to the whole power (-2**2 == -4)
            while ops and ops[-1] != "(" and (precedence(ops[-1]) > prec
                                              or (precedence(ops[-1]) == prec and tok != "**")):
                reduce_top()
            ops.append(("b", tok))
            expect_operand = True
        else:  # a number or '(' right after an operand: two numbers in a row, or a call like (3)(4)
            raise ArithmeticError_(f"unexpected {tok!r}")
    if expect_operand:
        raise ArithmeticError_("incomplete expression")
    while ops:
        if ops[-1] == "(":
            raise ArithmeticError_("unbalanced '('")
        reduce_top()
    return values[0]


# ----------------------------------------------------------------------------------------------
# Countdown (3 numbers)

_DECIMALS = re.compile(r"\d+")


def uses_exactly(equation, numbers):
    """The decimal numbers written in `equation` are exactly `numbers` (each once, any order), as
    int() reads them: a number over 4,300 digits fails to convert, so never matches (official)."""
    found = []
    for m in _DECIMALS.finditer(equation):
        if len(found) == len(numbers) or len(m.group()) > 4300:
            return False
        found.append(int(m.group()))
    return sorted(found) == sorted(numbers)


def countdown_correct(equation, ex):
    """`equation` uses exactly the given numbers and Python's value of it is within 1e-5 of the target."""
    if not uses_exactly(equation, ex["numbers"]):
        return False
    value = python_arithmetic(equation)
    return value is not None and abs(value - ex["target"]) < 1e-5


_EQUALS_AFTER_EXPRESSION = re.compile(r"=(?<=[0-9+\-*/() ]=)[0-9. ]")  # a literal first: searched fast
_EXPRESSION_CHARS = re.compile(r"[0-9+\-*/() ]*")


def countdown_eval_equation(raw):
    """The equation the official eval parser reads (eval/parse_and_get_acc.py): the content of the
    last \\boxed{} (`boxed_content` rules; without one, the first <answer> span, else the whole
    text), LaTeX \\div \\times \\cdot as / * *, and when an 'expression = number' appears, the
    expression alone."""
    equation = boxed_content(raw, strict=True)
    if equation is None:
        spans = tag_spans(raw, first=True)
        equation = spans[0].strip() if spans else raw
    equation = equation.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    # the official ([0-9+\-*/() ]+)=[0-9. ]+ backtracks over every start inside a long run (quadratic);
    # its match is the whole run of those characters before the first '=' that has one on each side
    m = _EQUALS_AFTER_EXPRESSION.search(equation)
    if not m:
        return equation
    end = m.start()
    start = end - (_EXPRESSION_CHARS.match(equation[::-1], len(equation) - end).end() - (len(equation) - end))
    return equation[start:end].strip()


def solve_countdown(numbers):
    """{integer value: an expression using every number exactly once} over + - * / and any order:
    every way of combining two of the numbers, then the result with the rest (exact fractions)."""
    found = {}

    def combine(items):  # items: list of (exact value, expression string)
        if len(items) == 1:
            value, expr = items[0]
            if value > 0 and value == int(value) and int(value) not in found:
                found[int(value)] = re.sub(r"\((\d+)\)", r"\1", expr)  # no parentheses around single numbers
            return
        for i, j in itertools.combinations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            results = [(a + b, f"{ea}+{eb}"), (a * b, f"({ea})*({eb})")]
            for x, ex, y, ey in ((a, ea, b, eb), (b, eb, a, ea)):  # both orders of - and /
                results.append((x - y, f"{ex}-({ey})" if "+" in ey or "-" in ey else f"{ex}-{ey}"))
                if y != 0:
                    results.append((Fraction(x) / y, f"({ex})/({ey})"))
            for r in results:
                combine(rest + [r])

    combine([(n, str(n)) for n in numbers])
    return found


class Countdown(Task):
    name, styles = "countdown", STYLES
    low, high = 1, 100  # numbers and targets in the official data's range (Countdown-Tasks, cd3 test)

    def key(self, ex):
        return tuple(sorted(ex["numbers"]))

    def examples(self, split, n, seed, exclude=()):
        """n (numbers, target) pairs: three numbers in 1..100 and the value, when it is an integer in
        1..100, of a random expression over them ((a∘b)∘c or c∘(a∘b), random order and operators),
        kept as the reference. Train and test use different number triples (test: sorted triples with
        an odd hash), and never a triple in `exclude`."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        exclude = set(exclude)
        ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
               "/": lambda x, y: Fraction(x) / y if y else None}
        rng, out = random.Random(f"countdown-{split}-{seed}"), []
        while len(out) < n:
            nums = [rng.randint(self.low, self.high) for _ in range(3)]
            key = tuple(sorted(nums))
            if (sum(v * 31 ** k for k, v in enumerate(key)) % 5 == 0) != (split == "test") or key in exclude:
                continue
            a, b, c = rng.sample(nums, 3)
            o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
            inner = ops[o1](a, b)
            outer_left = rng.random() < 0.5
            value = None if inner is None else ops[o2](inner, c) if outer_left else ops[o2](c, inner)
            if value is not None and value == int(value) and self.low <= value <= self.high:
                expr = f"({a}{o1}{b}){o2}{c}" if outer_left else f"{c}{o2}({a}{o1}{b})"
                out.append({"numbers": nums, "target": int(value), "reference": expr})
        return out

    def load(self, path):
        """Official JSONL {"input": "a,b,c", "output": "t"} or Countdown-Tasks {"nums": [...], "target": t}."""
        out = []
        for n, row in read_jsonl(path, "countdown", [("input", "nums"), ("output", "target")]):
            nums = row["nums"] if "nums" in row else row["input"]
            target = row["target"] if "target" in row else row["output"]
            if isinstance(nums, str):
                nums = [x.strip() for x in nums.split(",")]
            try:
                nums = [_strict_int(x) for x in nums]
                target = _strict_int(target)
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {n}: numbers and target must be integers "
                                 f"(a list or 'a,b,c', and a number), got {json.dumps(row)[:80]}") from None
            out.append({"numbers": nums, "target": target})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ",".join(map(str, ex["numbers"])) + f">{ex['target']}="
        return (f"Using the numbers {ex['numbers']}, each exactly once, write an arithmetic expression equal to "
                f"{ex['target']}. You may use +, -, * and / and parentheses. Put only the expression (for example "
                f"(1+2)*3), with no equals sign, inside the answer tags.\n{FORMAT}")

    def reference(self, ex, style):
        self._check_style(style)
        expr = ex.get("reference") or solve_countdown(ex["numbers"]).get(ex["target"])
        if expr is None:
            raise ValueError(f"countdown target {ex['target']} is not reachable from {ex['numbers']}")
        if style == "tiny":
            return expr
        return f"<reasoning>\nTry the operations in turn.\n</reasoning>\n<answer>\n{expr}\n</answer>"

    def _reward(self, text, ex, style):
        """gdsd/rewards.py reward_func_countdown: no <answer> 0; an answer (even empty) whose numbers
        or value are wrong 0.1; right 1.0. 'expr = target' is not accepted ('=' is no arithmetic)."""
        equation = text.strip() if style == "tiny" else last_answer(text)
        if equation is None or (style == "tiny" and not equation):
            return 0.0
        return 1.0 if countdown_correct(equation, ex) else 0.1

    def accuracy(self, raw, ex, style):
        """eval/parse_and_get_acc.py parse_countdown_answers: the equation it extracts reaches the target."""
        equation = raw.strip() if style == "tiny" else countdown_eval_equation(raw)
        return {"correct": float(countdown_correct(equation, ex)), "total": 1,
                "answered": float(bool(equation.strip()))}


def _strict_int(x):
    """An int from an int or a string of digits; bools, floats and other types are refused."""
    if isinstance(x, bool) or not isinstance(x, (int, str)):
        raise TypeError(x)
    return int(x)


# ----------------------------------------------------------------------------------------------
# GSM8K

_THE_ANSWER_IS = re.compile(r"The answer is (-?[0-9.,]+).")
_HASHES = re.compile(r"#### (-?[0-9.,]+)")
_LAST_INTEGER_REVERSED = re.compile(r"[0-9]+-?")                   # -?[0-9]+, read backwards
_HASH_ANSWER = re.compile(r"####\s*\$?([\d,]+(?:\.\d+)?)")
# re.findall(r"\\boxed{(.*?)}") in one pass: a \boxed{ that does not close on its line consumes the line
# (every \boxed{ before that line break fails alike), so no opening is scanned twice
_BOX_OR_LINE = re.compile(r"\\boxed\{(?:([^}\n]*)\}|[^}\n]*)")
_READABLE_BOX = re.compile(r"^[^\n\d]*\d|^[^\S\n]*[+-]?(?:inf|infinity|nan)[^\S\n]*$", re.MULTILINE | re.IGNORECASE)


def gsm8k_final_number(text):
    """The answer gdsd/rewards.py's extract_answer reads: the number after 'The answer is ', else
    after '#### ', else the last integer of the text, else ''."""
    m = _THE_ANSWER_IS.search(text) or _HASHES.search(text)
    if m:
        return m.group(1)
    return reversed_search(_LAST_INTEGER_REVERSED, text) or ""


def xml_answer(text):
    """gdsd/rewards.py's _extract_xml_answer: after the last <answer> (or the whole text), up to the
    next </answer>, stripped."""
    return text.rpartition("<answer>")[2].partition("</answer>")[0].strip()


_SOFT_MIDDLE = re.compile(r"</reasoning>\s*<answer>")
_STRICT_MIDDLE = "\n</reasoning>\n<answer>\n"


def xml_format_terms(text):
    """The four format terms of the official gsm8k_xml reward, in its order: tag count (0.125 per tag
    present exactly once, minus 0.001 per character after "\\n<answer>\\n" and after "\\n</answer>"
    but one), soft format (0.5: the text starts <reasoning>…</reasoning> <answer>…</answer>), strict
    format (0.5: exactly <reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n, a final blank
    line allowed), integer answer (0.5: the tagged answer is all digits)."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.partition("\n<answer>\n")[2]) * 0.001  # found once, left to right
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.partition("\n</answer>")[2]) - 1) * 0.001
    # <reasoning>.*?</reasoning>\s*<answer>.*?</answer> from the start: the earliest middle is the best
    middle = _SOFT_MIDDLE.search(text, 11) if text.startswith("<reasoning>") else None
    soft = middle is not None and text.find("</answer>", middle.end()) >= 0
    middle = text.find(_STRICT_MIDDLE, 12)
    ends = [len(text) - len(e) for e in ("\n</answer>\n", "\n</answer>\n\n") if text.endswith(e)]
    strict = text.startswith("<reasoning>\n") and middle >= 0 and any(j >= middle + len(_STRICT_MIDDLE) for j in ends)
    return [count, 0.5 * soft, 0.5 * strict, 0.5 * xml_answer(text).isdigit()]


def gsm8k_eval_number(raw):
    """The number math_eval/parse_and_get_acc.py's parse_gsm_answers reads, or None: the first
    \\boxed{…} (on one line) whose content is a float or holds a number (its first), else the first
    <answer> span as a float or its last number."""
    # a box counts when float() reads it or it holds a digit: found among all boxes (one per line of
    # `joined`) by one search, so a text of a hundred thousand empty boxes costs no Python loop
    contents = _BOX_OR_LINE.findall(raw)
    joined = "\n".join(contents)
    m = _READABLE_BOX.search(joined)
    if m:
        content = contents[joined.count("\n", 0, m.start())].strip()
        value = _float_or_none(content)
        return value if value is not None else float(first_number(content))
    spans = tag_spans(raw, first=True)
    content = spans[0].strip() if spans else ""
    if content:
        value = _float_or_none(content)
        if value is not None:
            return value
        last = last_number(content)
        if last is not None:
            return float(last)
    return None


def _float_or_none(s):
    try:
        return float(s)
    except ValueError:
        return None


class GSM8K(Task):
    def __init__(self, xml_terms=False):
        # gsm8k: the official "gsm8k" reward (final number, 1.0); gsm8k-xml: its five-term XML reward
        self.xml_terms = xml_terms
        self.name, self.reward_range = ("gsm8k-xml", (-4.0, 4.0)) if xml_terms else ("gsm8k", (0.0, 1.0))

    def load(self, path):
        """JSONL {"question", "answer": "… #### n"} (the GSM8K files): the reward compares the text after
        '####' (official extract_hash_answer); the eval parser the first number after it, as a float."""
        out = []
        for n, row in read_jsonl(path, "gsm8k", ["question", "answer"]):
            answer = text_field(row, ["answer"], path, n)
            m = _HASH_ANSWER.search(answer)
            if "####" not in answer or not m:
                raise ValueError(f"{path}, line {n}: the answer must end with '#### <number>', got {answer[-40:]!r}")
            out.append({"question": text_field(row, ["question"], path, n),
                        "answer": answer.split("####", 1)[1].strip(),
                        "value": float(m.group(1).replace(",", "")), "solution": answer.split("####", 1)[0].strip()})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        if self.xml_terms:
            return f"{FORMAT}\n\n{ex['question']}"
        return f"{ex['question']}\nThink it through step by step, then write the final answer inside \\boxed{{}}."

    def reference(self, ex, style):
        self._check_style(style)
        if self.xml_terms:
            return f"<reasoning>\n{ex.get('solution', '')}\n</reasoning>\n<answer>\n{ex['answer']}\n</answer>\n"
        return f"{ex.get('solution', '')}\nSo the answer is \\boxed{{{ex['answer']}}}."

    def _reward(self, text, ex, style):
        """gsm8k: 1.0 when gdsd/rewards.py's extract_answer equals the reference text exactly (no
        numeric normalisation: '1,000' is not '1000'). gsm8k-xml: the four format terms plus 2.0 when
        the tagged answer equals the reference, summed in the official order. Departure: the tag-count
        term is unbounded below (-0.001 per character); the sum is clamped at -4 (4,000 characters
        after the answer tag, never reached by a 512-token completion)."""
        if not self.xml_terms:
            return float(gsm8k_final_number(text).strip() == ex["answer"])
        return sum(xml_format_terms(text)) + 2.0 * (xml_answer(text) == ex["answer"])

    def accuracy(self, raw, ex, style):
        """math_eval/parse_and_get_acc.py parse_gsm_answers: the number read (`gsm8k_eval_number`)
        equals the reference as a float."""
        value = gsm8k_eval_number(raw)
        return {"correct": float(value is not None and value == ex["value"]), "total": 1,
                "answered": float(value is not None)}


# ----------------------------------------------------------------------------------------------
# MATH500

MAX_BOX_SCAN = 1 << 13
_BRACE = re.compile(r"[{}]")


def last_boxed(text):
    """What the official last_boxed_only_string returns: after the last '\\boxed ' (with a space)
    anywhere, up to a '$'; else the last \\boxed (or \\fbox) with its braces up to the first '}'
    that brings their count back to zero, None if none does; the whole text when there is no box.
    Departure: the braces are counted over at most MAX_BOX_SCAN (8,192) characters, beyond which
    the box counts as unbalanced (the official scan runs to the end of the text; no real completion
    holds a box that long, and this bounds the one per-character loop of the parsers)."""
    if "\\boxed " in text:
        return "\\boxed " + text.rpartition("\\boxed ")[2].partition("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for m in _BRACE.finditer(text, start, start + MAX_BOX_SCAN):
        depth += 1 if m.group() == "{" else -1
        if m.group() == "}" and depth == 0:
            return text[start:m.end()]
    return None


def boxed_content(text, strict=False):
    """The official remove_boxed(last_boxed_only_string(text)): the content of the last box, or None
    when its braces never balance. A text without a \\boxed{…} comes back whole, as the official
    functions return it, or None when `strict` (the raising remove_boxed of eval/parse_utils.py)."""
    s = last_boxed(text)
    if s is None:
        return None
    if s.startswith("\\boxed "):
        return s[7:]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[7:-1]
    return None if strict else s


class _Unnormalisable(Exception):
    """math_eval's normaliser raised: the official is_equiv then compares the raw strings."""


def math_normalize(s, strict=False):
    """The official strip_string: the MATH answer normaliser of the Hendrycks MATH code. Without
    `strict`, gdsd/utils/math500_utils.py (training); with it, math_eval/parser_helper.py (eval),
    which raises on a '\\text{ ' unit that appears twice, a '\\sqrt' or '\\frac' at the very end, and
    an 'a/b' whose parts are not numbers int() reads."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""),
                     ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units on the right
        if strict and s.count("\\text{ ") != 1:
            raise _Unnormalisable("units")
        s = s.partition("\\text{ ")[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1 and len(s.partition("=")[0]) <= 2:  # "x = 5" -> "5"
        s = s.partition("=")[2]
    s = _fix_sqrt(s, strict).replace(" ", "")
    s = _fix_fracs(s, strict)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s, strict)


def _fix_sqrt(s, strict):
    r"""\sqrt3 -> \sqrt{3}."""
    parts = s.split("\\sqrt")
    out = [parts[0]]
    for part in parts[1:]:
        if not part:
            if strict:
                raise _Unnormalisable("sqrt at the end")
            out.append("\\sqrt")
        elif part[0] != "{":
            out.append("\\sqrt{" + part[0] + "}" + part[1:])
        else:
            out.append("\\sqrt" + part)
    return "".join(out)


def _fix_fracs(s, strict):
    r"""\frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}; a bare \frac with fewer than two characters
    after it leaves the string unchanged."""
    parts = s.split("\\frac")
    out = [parts[0]]
    for part in parts[1:]:
        out.append("\\frac")
        if not part and strict:
            raise _Unnormalisable("frac at the end")
        if part[:1] == "{":
            out.append(part)
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out.append("{" + part[0] + "}{" + part[1] + "}" + part[2:])
        else:
            out.append("{" + part[0] + "}" + part[1:])
    return "".join(out)


def _fix_a_slash_b(s, strict):
    r"""'3/4' -> \frac{3}{4} when both parts are integers written plainly."""
    a, slash, b = s.partition("/")
    if not slash or "/" in b:
        return s
    try:
        if len(a) > 4300 or len(b) > 4300:
            raise ValueError("too many digits")
        a_int, b_int = int(a), int(b)
    except ValueError:
        if strict:
            raise _Unnormalisable("a/b") from None
        return s
    return "\\frac{" + str(a_int) + "}{" + str(b_int) + "}" if s == f"{a_int}/{b_int}" else s


def math_equiv(a, b, strict=False):
    """The official is_equiv: both None is equal, one None is not; otherwise the normalised strings
    are compared, or (when the eval normaliser raises) the raw ones."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return math_normalize(a, strict) == math_normalize(b, strict)
    except _Unnormalisable:
        return a == b


def first_box_tag(text):
    r"""The content of the first \box{…} on one line (at least one character), stripped, or None:
    math_eval's fallback inside an <answer> span."""
    pos = 0
    while (p := text.find("\\box{", pos)) >= 0:
        close = text.find("}", p + 6)
        newline = text.find("\n", p + 5, close if close >= 0 else len(text))
        if close < 0:
            return None
        if newline >= 0:
            pos = newline + 1
            continue
        return text[p + 5:close].strip()
    return None


class Math500(Task):
    name, reward_range = "math500", (0.0, 3.0)

    def load(self, path):
        """JSONL {"problem", "solution" and/or "answer"} (MATH-500): the training reward compares with
        the last box of the solution (official math_xml), the eval parser with the answer field (or
        that box when there is no answer field)."""
        out = []
        for n, row in read_jsonl(path, "math500", ["problem", ("answer", "solution")]):
            solution = text_field(row, ["solution"], path, n) if row.get("solution") is not None else None
            answer = text_field(row, ["answer"], path, n) if row.get("answer") is not None else boxed_content(solution)
            if not answer:
                raise ValueError(f"{path}, line {n}: no 'answer' field and no \\boxed{{}} in 'solution'")
            out.append({"problem": text_field(row, ["problem"], path, n), "answer": answer, "solution": solution or "",
                        "reward_answer": boxed_content(solution) if solution is not None else answer})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        return f"{FORMAT}\n\nSolve the problem step by step and put the final answer in \\boxed{{}}.\n\n{ex['problem']}"

    def reference(self, ex, style):
        self._check_style(style)
        return f"<reasoning>\n{ex.get('solution', '')}\n</reasoning>\n<answer>\n\\boxed{{{ex['answer']}}}\n</answer>"

    def _reward(self, text, ex, style):
        """The official math_xml reward: 2.0 when the last box inside the first <answer> span (the
        whole text without one) is equivalent to the reference's, plus 0.5·(1 for an <answer> tag +
        1 for a \\boxed inside its span, 0.5 without one)."""
        has_tag = "<answer>" in text
        span = text.partition("<answer>")[2].partition("</answer>")[0] if has_tag else text
        correct = 2.0 if math_equiv(boxed_content(span), ex.get("reward_answer", ex["answer"])) else 0.0
        return correct + 0.5 * (float(has_tag) + (1.0 if "\\boxed" in span else 0.5))

    def accuracy(self, raw, ex, style):
        """math_eval/parse_and_get_acc.py parse_math_answers: the last box of the text (the whole text
        without one), else the first <answer> span (or a \\box{…} inside it), equivalent to the answer
        under the eval normaliser."""
        parsed = boxed_content(raw)
        if not parsed:
            spans = tag_spans(raw, first=True)
            if spans:
                parsed = spans[0].strip()
                parsed = first_box_tag(parsed) or parsed if "\\box{" in parsed else parsed
        return {"correct": float(parsed is not None and math_equiv(parsed, ex["answer"], strict=True)), "total": 1,
                "answered": float(bool(parsed))}


# ----------------------------------------------------------------------------------------------
# Code, run in a sandbox the program cannot reach beyond its own return values
#
# Official semantics (gdsd/rewards.py code_format_reward + code_reward, utils/local_sandbox.py): the
# completion must end with its only fenced block, opened by ```python; that block parsing as Python
# gives 1.0 (a SyntaxError 0.5, another parser error 0); then each test (an assert string) runs in a
# fresh namespace after the program, 1 s each, and the fraction passed is added. A program naming
# threading, multiprocess(ing), os, shutil, torch or sklearn is not run (every test fails).
#
# Why a test is not simply run next to the program: whatever runs in the program's process is the
# program's to forge (it can read a token, rewrite the test list, exit with status 0, return an
# object whose __eq__ is always true). So the test runs here, in the scoring process, and every name
# the program defines is a proxy: calling it, reading an attribute or an item, iterating it runs in
# the sandbox and returns plain data (None, bool, int, float, complex, str, bytes and lists, tuples,
# sets, dicts of them), or a proxy for anything else. The comparison `==` is made here, on plain
# data; the program's only power is the value its functions return, which it has legitimately.
# Departures, affecting tests that use more than plain values: a proxy equals only itself (an object
# the program returns is never == a value, even if its __eq__ says so); an argument the test builds
# that is not plain data or a proxy (a lambda, an instance of a class the test defines) fails the test;
# a function's in-place change of an argument, and a test's assignment to a global the program reads,
# are not seen across the boundary; and a test may not call eval, exec, compile, open or input (they
# would run program output in the scoring process).
#
# The sandbox process: `python -I -S`, an empty environment, a fresh temporary directory, limits on
# CPU time (2 s), address space (1 GiB), file size (1 MiB) and open files, and no way to start another
# process or thread (RLIMIT_NPROC 0: nothing can outlive the kill, fork bombs and forked memory are
# impossible); it is not ptrace-able or readable through /proc (not dumpable). Started as root it
# also takes a fresh unprivileged uid of its own, and, where the kernel allows unshare (containers
# usually do for root), a private mount and network namespace: no network at all, empty private
# /tmp, /var/tmp and /dev/shm, and the project directory, the working directory and home directories
# hidden under empty mounts. Not isolated as an unprivileged user: the network, and every file and
# process that user can reach; `sandbox_isolation()` says what the running process gets.

SANDBOX_TEST_SECONDS = 1.0          # per test, as the official executor (plus the interpreter's start)
SANDBOX_START_SECONDS = 10.0        # for the interpreter to start at all (a loaded machine)
SANDBOX_CPU_SECONDS = 2
SANDBOX_MEMORY = 1 << 30
SANDBOX_FILE_BYTES = 1 << 20
SANDBOX_REPLY_BYTES = 1 << 20       # one message from the sandbox; a longer one fails the test
SANDBOX_WORKERS = 4                 # tests of one completion run in parallel, as the official pool
UNSAFE_WORDS = ("threading", "multiprocess", "import os", "from os", "shutil", "import torch", "from torch",
                "import sklearn", "from sklearn")


def code_block(text):
    """The body of the completion's only fenced block when the official format holds: no ``` before
    '```python\\n', and the closing ``` ends the text (one newline may follow); else None."""
    start = text.find("```")
    if start < 0 or not text.startswith("```python\n", start):
        return None
    end = text.find("```", start + 10)
    return text[start + 10:end] if end >= 0 and text[end:] in ("```", "```\n") else None


# -- plain data across the process boundary (these two functions also run inside the sandbox) --

def _encode(value, register, depth=0):
    """JSON-ready form of `value`: plain data tagged by its exact type; anything else (a subclass of
    int or str included) becomes {"h": register(value)}, a handle."""
    t = type(value)
    if value is None or t is bool or t is str or t is float:
        return value
    if t is int:
        return value if -(1 << 53) < value < 1 << 53 else {"i": hex(value)}
    if depth < 64:
        if t is list or t is tuple or t is set or t is frozenset:
            tag = {list: "l", tuple: "t", set: "s", frozenset: "fs"}[t]
            return {tag: [_encode(v, register, depth + 1) for v in value]}
        if t is dict:
            return {"d": [[_encode(k, register, depth + 1), _encode(v, register, depth + 1)] for k, v in value.items()]}
        if t is bytes:
            return {"b": value.hex()}
        if t is complex:
            return {"c": [value.real, value.imag]}
    return {"h": register(value)}


def _decode(data, resolve, depth=0):
    """Inverse of `_encode`; handles through `resolve(id)`. Raises ValueError on anything malformed."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if depth > 64 or type(data) is not dict or len(data) != 1:
        raise ValueError("malformed value")
    (tag, v), = data.items()
    if tag in ("l", "t", "s", "fs") and type(v) is list:
        items = [_decode(x, resolve, depth + 1) for x in v]
        return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
        return {_decode(k, resolve, depth + 1): _decode(x, resolve, depth + 1) for k, x in v}
    if tag == "i" and type(v) is str:
        return int(v, 16)
    if tag == "b" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(*v)
    if tag == "h" and type(v) is int:
        return resolve(v)
    raise ValueError("malformed value")


# The sandbox's own code (the codec above is prepended). It reads one JSON job line, isolates itself,
# reports "ready", parses the program (the format verdict, before any of it runs), runs it, then
# answers requests until it is killed. Every message is one JSON line on the inherited stdout.
_SANDBOX_MAIN = r'''
import ast, builtins, ctypes, json, os, resource, sys
out = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1)
os.dup2(null, 2)

def send(message):
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(out, data):]

job = json.loads(sys.stdin.readline())
isolated = []
libc = ctypes.CDLL(None, use_errno=True)
if os.geteuid() == 0:
    # a private mount, network, IPC and host-name namespace: no network, private scratch directories,
    # the caller's directories hidden (only where the kernel lets this process unshare)
    if libc.unshare(0x00020000 | 0x40000000 | 0x08000000 | 0x04000000) == 0 and \
            libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) == 0:
        hidden = [libc.mount(b"tmpfs", p.encode(), b"tmpfs", 0x2 | 0x4 | 0x8, b"size=64k,mode=0755") == 0
                  for p in job["hide"]]
        scratch = [libc.mount(b"tmpfs", p.encode(), b"tmpfs", 0x2 | 0x4, b"size=16m,mode=1777") == 0
                   for p in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(p)]
        os.chdir("/tmp")
        isolated += ["network"] + (["files"] if all(hidden + scratch) else [])
    os.setgroups([])
    try:
        os.setresgid(job["uid"], job["uid"], job["uid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
    except OSError:  # a container whose user namespace maps few ids
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    isolated.append("uid")
for limit, value in ((resource.RLIMIT_CPU, job["cpu"]), (resource.RLIMIT_FSIZE, job["fsize"]),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_AS, job["memory"]),
                     (resource.RLIMIT_NPROC, 0)):
    resource.setrlimit(limit, (value, value))
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, no /proc/PID/mem or environ for same-uid processes
send({"ready": isolated})

program = job["program"]
try:
    ast.parse(program.strip())
    verdict = "ok"
except SyntaxError:
    verdict = "syntax error"
except Exception:
    verdict = "error"
send({"syntax": verdict})
if not job["run"]:
    os._exit(0)
namespace = {"__builtins__": builtins}  # no __name__: the official executor skips `if __name__ == "__main__":`
try:
    exec(compile(program, "<program>", "exec"), namespace)
except BaseException:
    send({"loaded": False})
    os._exit(0)
send({"loaded": True})

handles = []

def register(value):
    handles.append(value)
    return len(handles) - 1

def resolve(i):
    return handles[i]

for line in sys.stdin:
    try:
        request = json.loads(line)
        op = request["op"]
        if op == "names":
            result = [n for n in request["names"] if n in namespace and n != "__builtins__"]
        elif op == "get":
            result = namespace[request["name"]]
        else:
            target = handles[request["h"]]
            if op == "attr":
                result = getattr(target, request["name"])
            elif op == "call":
                result = target(*_decode(request["args"], resolve), **dict(_decode(request["kwargs"], resolve)))
            elif op == "item":
                result = target[_decode(request["key"], resolve)]
            elif op == "iter":
                result = list(target)
            elif op == "len":
                result = len(target)
            elif op == "bool":
                result = bool(target)
            elif op == "str":
                result = str(target)
            elif op == "contains":
                result = _decode(request["value"], resolve) in target
            else:
                raise ValueError(op)
        send({"ok": _encode(result, register)})
    except BaseException as error:
        send({"error": type(error).__name__})
'''


class SandboxError(Exception):
    """The sandbox broke the protocol, ran out of time or died: the test in progress fails."""


class _Timeout(BaseException):
    """Past the deadline: a BaseException, so `except Exception` in a test cannot swallow it."""


class _Remote:
    """A value living in the sandbox (a function, a class, an instance the program made)."""
    __slots__ = ("_box", "_id")

    def __init__(self, box, handle):
        object.__setattr__(self, "_box", box)
        object.__setattr__(self, "_id", handle)

    def __call__(self, *args, **kwargs):
        return self._box.request("call", self._id, args=list(args), kwargs=[[k, v] for k, v in kwargs.items()])

    def __getattr__(self, name):
        return self._box.request("attr", self._id, name=name)

    def __getitem__(self, key):
        return self._box.request("item", self._id, key=key)

    def __iter__(self):
        return iter(self._box.request("iter", self._id))

    def __len__(self):
        return self._box.request("len", self._id)

    def __bool__(self):
        return self._box.request("bool", self._id)

    def __contains__(self, value):
        return self._box.request("contains", self._id, value=value)

    def __str__(self):
        return self._box.request("str", self._id)


class _Sandbox:
    """One sandboxed process running one program: the syntax verdict, then proxied requests."""

    def __init__(self, program, run):
        self.workdir = tempfile.mkdtemp(prefix="gdsd-sandbox-")
        uid = 100000 + secrets.randbelow(1 << 20)
        if os.geteuid() == 0:
            os.chown(self.workdir, uid, uid)
        job = {"program": program, "run": run, "uid": uid, "hide": _hidden_directories(), "cpu": SANDBOX_CPU_SECONDS,
               "memory": SANDBOX_MEMORY, "fsize": SANDBOX_FILE_BYTES}
        harness = "\n".join(inspect.getsource(f) for f in (_encode, _decode)) + _SANDBOX_MAIN
        self.proc = subprocess.Popen([sandbox_python(), "-I", "-S", "-c", harness], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.workdir,
                                     env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
        self.buffer = b""
        self.deadline = time.monotonic() + SANDBOX_START_SECONDS
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            self.isolation = self.read()["ready"]
        except (OSError, KeyError, TypeError) as e:
            self.close()
            raise SandboxError(f"the sandbox did not start: {e}") from None
        self.deadline = time.monotonic() + SANDBOX_TEST_SECONDS  # the test's time starts now

    def read(self):
        """The next message, within the deadline and the size limit."""
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            if len(self.buffer) > SANDBOX_REPLY_BYTES:
                raise SandboxError("message too long")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16) if ready else b""
            if ready and not chunk:
                raise SandboxError("the sandbox exited")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise SandboxError("malformed message") from None
        if type(message) is not dict:
            raise SandboxError("malformed message")
        return message

    def request(self, op, handle=None, **fields):
        """Run `op` on a handle in the sandbox and return the decoded result, or raise its error."""
        register = lambda v: v._id if isinstance(v, _Remote) and v._box is self else _refuse(v)
        payload = {k: _encode(v, register) for k, v in fields.items() if k not in ("name", "names")}
        payload.update({k: v for k, v in fields.items() if k in ("name", "names")}, op=op, h=handle)
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise SandboxError("the sandbox exited") from None
        reply = self.read()
        if "ok" in reply:
            try:
                return _decode(reply["ok"], lambda i: _Remote(self, i))
            except (ValueError, TypeError, RecursionError, MemoryError):
                raise SandboxError("malformed value") from None
        name = reply.get("error")
        error = getattr(builtins, name, None) if isinstance(name, str) else None
        if isinstance(error, type) and issubclass(error, Exception) and error.__module__ == "builtins":
            raise error("raised in the sandbox")
        raise SandboxError(f"the program raised {str(name)[:40]}")

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # it cannot have started any other process
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def _refuse(value):
    raise TypeError(f"a test argument of type {type(value).__name__} cannot be sent to the sandbox")


def _test_names(code):
    """Every name a compiled test (and its nested scopes) may look up."""
    names, stack = set(), [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        names.update(c.co_freevars)
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return sorted(names)


_TEST_BUILTINS = {k: v for k, v in vars(builtins).items()
                  if k not in ("eval", "exec", "compile", "open", "input", "breakpoint", "help")}


def _run_test(box, test):
    """Whether `test` passes against the program running in `box` (which must have loaded it)."""
    try:
        code = compile(test, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    try:
        scope = {"__builtins__": _TEST_BUILTINS}
        for name in box.request("names", names=_test_names(code)):
            scope[name] = box.request("get", name=name)
        exec(code, scope)
    except _Timeout:
        return False
    except Exception:
        return False
    return time.monotonic() <= box.deadline


def run_program(program, tests):
    """(syntax verdict of the program, [whether each test passed]): each test in its own sandbox with
    the program loaded afresh, up to SANDBOX_WORKERS at once. The syntax verdict ("ok", "syntax
    error", "error") comes from the first sandbox before the program runs; when it is not "ok", or the
    program names an unsafe module, no test runs."""
    run = bool(tests) and not any(w in program for w in UNSAFE_WORDS)
    try:
        first = _Sandbox(program, run=run)
        syntax = first.read().get("syntax")
    except (SandboxError, _Timeout):
        return "error", [False] * len(tests)
    if syntax != "ok" or not run:
        first.close()
        return syntax, [False] * len(tests)
    with ThreadPoolExecutor(max_workers=min(SANDBOX_WORKERS, len(tests))) as pool:
        results = [pool.submit(_test_in_sandbox, program, tests[0], first)]
        results += [pool.submit(_test_in_sandbox, program, t) for t in tests[1:]]
        return syntax, [r.result() for r in results]


def _test_in_sandbox(program, test, box=None):
    """Whether `test` passes against `program` loaded in `box` (a new sandbox when None); closes it."""
    try:
        box = box or _Sandbox(program, run=True)
        message = box.read()
        while "loaded" not in message:  # past the syntax verdict
            message = box.read()
        return message["loaded"] is True and _run_test(box, test)
    except (SandboxError, _Timeout):
        return False
    finally:
        if box is not None:
            box.close()


def _hidden_directories():
    """Directories the sandbox sees empty (when it gets a mount namespace): the project, the working
    directory and the home directories; never one that holds the sandbox's interpreter."""
    python_home = os.path.realpath(os.path.dirname(os.path.dirname(sandbox_python())))
    candidates = {os.path.dirname(os.path.realpath(__file__)), os.path.realpath(os.getcwd()),
                  os.path.realpath(os.path.expanduser("~")), "/root", "/home"}
    return sorted(d for d in candidates if os.path.isdir(d) and d != "/" and
                  not (python_home + "/").startswith(d.rstrip("/") + "/"))


def _world_executable(path):
    """Whether any user may run `path`: the file and every directory above it are executable by others."""
    path = os.path.realpath(path)
    parts = [path] + [os.path.dirname(path)]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)
    except OSError:
        return False


def sandbox_python():
    """The interpreter the sandbox runs. Started as root, the sandbox switches to a fresh uid, which
    needs an interpreter outside private directories: this one if it qualifies, else the system python3."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _world_executable(candidate):
            return candidate
    raise RuntimeError("the code sandbox switches to an unprivileged uid when started as root, and found no "
                       "python3 that user may execute (this interpreter lives in a private directory); install "
                       "a system python3 in /usr/bin or run as an unprivileged user")


def sandbox_isolation():
    """What the sandbox isolates in this process's setting: a list among "uid" (a fresh unprivileged
    uid), "network" and "files" (private namespaces), besides the limits it always has."""
    box = _Sandbox("", run=False)
    try:
        return box.isolation
    finally:
        box.close()


class Code(Task):
    name, reward_range = "code", (0.0, 2.0)

    def load(self, path):
        out = []
        for n, row in read_jsonl(path, "code", [("question", "text", "prompt"), ("test_cases", "test_list")]):
            tests = row.get("test_cases", row.get("test_list"))
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError(f"{path}, line {n}: 'test_cases' must be a non-empty list of assert strings")
            out.append({"question": text_field(row, ["question", "text", "prompt"], path, n), "test_cases": tests,
                        "solution": row.get("solution", row.get("code", "")) or ""})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        return (f"{ex['question']}\nWrite a Python solution. Answer with exactly one ```python fenced block, "
                f"placed at the very end of your answer. It must pass tests such as:\n{ex['test_cases'][0]}")

    def reference(self, ex, style):
        self._check_style(style)
        return f"Here is a solution.\n```python\n{ex.get('solution', '')}\n```"

    def _execute(self, text, ex):
        """(format term, [test passed]) of the official code reward, with the program run once."""
        block = code_block(text)
        if block is None:
            return 0.0, [False] * len(ex["test_cases"])
        syntax, passed = run_program(block, ex["test_cases"])
        return {"ok": 1.0, "syntax error": 0.5}.get(syntax, 0.0), passed

    def _reward(self, text, ex, style):
        fmt, passed = self._execute(text, ex)
        return fmt + (sum(passed) / len(passed) if fmt == 1.0 else 0.0)

    def grade(self, text, raw, ex, style):
        """The reward, and "correct" when every test passes (pass@1; the official repository evaluates
        code with lm-eval's HumanEval / MBPP tasks, which this project does not reproduce)."""
        fmt, passed = self._execute(text, ex)
        reward = fmt + (sum(passed) / len(passed) if fmt == 1.0 else 0.0)
        lo, hi = self.reward_range
        return {"reward": min(max(reward, lo), hi), "correct": float(fmt == 1.0 and all(passed)), "total": 1,
                "answered": float(fmt > 0)}


# ----------------------------------------------------------------------------------------------

TASKS = {t.name: t for t in (Sudoku(), Countdown(), GSM8K(), GSM8K(xml_terms=True), Math500(), Code())}


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
