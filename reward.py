"""reward.py — the tasks of GDSD and their verifiers: one function is both the RL reward and the
evaluation metric, with the semantics of the official code so numbers compare with the paper.

Tasks (paper §5 experiments; the d1 family's benchmarks):
    sudoku     4×4 puzzles, generated offline from the 288 valid grids (train / test solution grids
               disjoint); official test file: CSV `Puzzle,Solution`, 16 characters, '0' = blank.
               score = fraction of blank cells filled correctly.
    countdown  3 numbers and a target, generated offline with a solver (every target reachable);
               official test file: JSONL {"input": "a,b,c", "output": "target"}; Hugging Face
               Countdown-Tasks rows {"nums": [...], "target": n}. score 1.0 correct / 0.1 an
               equation that is wrong or misuses the numbers / 0 no equation.
    gsm8k      local JSONL {"question", "answer": "... #### n"}; score = the final number matches.
    gsm8k-xml  the same, scored with the official XML format terms added (max 4.0).
    math500    local JSONL {"problem", "solution" and/or "answer"}; score = the last \\boxed{} answer
               is equivalent to the reference after normalisation.
    code       local JSONL {"question", "test_cases": ["assert ...", ...]}; score = fraction of the
               asserts passed by the completion's last ```python block, run in a sandboxed process.

How to use:
    task = get_task("sudoku")
    train, test = task.examples("train", 1000, seed=0), task.examples("test", 256, seed=0)
    test = task.load("sudoku_4x4_test.csv")                 # or the official file
    prompt = task.prompt(test[0], "chat")                   # "tiny": compact format of the tiny model
    reward = task.score(completion_text, test[0], "chat")   # float in [0, task.max_score]
    extra = task.details(completion_text, test[0], "chat")  # e.g. {"solved": 1.0, "correct_cells": 8}

Model output is untrusted: nothing here calls `eval`; arithmetic goes through a small parser, and
code runs only in a subprocess with time, memory, process and file-size limits (see `run_sandboxed`).
Imports only the standard library.
"""
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from fractions import Fraction

STYLES = ("chat", "tiny")
FORMAT = ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")


def last_answer(text):
    """Content of the last <answer>...</answer> in `text`, or None."""
    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


def read_rows(path, kind):
    """Lines of a local data file, with a clear error if it is absent."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} data file {path!r} does not exist; pass the path of a local copy")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


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
            if not any(k in row for k in alternatives):
                raise ValueError(f"{path}, line {n}: missing field {' or '.join(map(repr, alternatives))} "
                                 f"(a {kind} row needs {required})")
        rows.append((n, row))
    return rows


class Task:
    """A task: examples, prompts in two styles, the reference completion, and the verifier."""
    name = ""
    max_score = 1.0
    styles = ("chat",)

    def _check_style(self, style):
        if style not in self.styles:
            raise ValueError(f"task {self.name!r} has no {style!r} format (it has {list(self.styles)}); "
                             "the tiny model knows sudoku and countdown only")

    def examples(self, split, n, seed):
        raise ValueError(f"task {self.name!r} has no offline generator: pass a local file (--data PATH) "
                         f"in its format; see the README's 'Tasks and data'")

    def details(self, text, example, style):
        return {}


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
    """The 288 valid 4×4 sudoku grids, in lexicographic order."""
    rows = ["".join(p) for p in itertools.permutations("1234")]
    return [g for g in ("".join(r) for r in itertools.product(rows, repeat=4)) if valid_grid(g)]


class Sudoku(Task):
    name, styles = "sudoku", STYLES
    split_seed, test_grids = 1234, 58  # a fixed split: test solution grids never appear in training

    def __init__(self, blanks=8):
        self.blanks = blanks
        grids = all_grids()
        random.Random(self.split_seed).shuffle(grids)
        self.grids = {"test": grids[: self.test_grids], "train": grids[self.test_grids:]}

    def examples(self, split, n, seed):
        """n puzzles: a solution grid of the split and `blanks` random cells set to '0'."""
        if split not in self.grids:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"sudoku-{split}-{seed}")
        out = []
        for _ in range(n):
            sol = rng.choice(self.grids[split])
            holes = set(rng.sample(range(16), self.blanks))
            out.append({"puzzle": "".join("0" if i in holes else d for i, d in enumerate(sol)), "solution": sol})
        return out

    def load(self, path):
        """The official CSV: header `Puzzle,Solution`, then 16-character rows ('0' = blank)."""
        lines = read_rows(path, "sudoku")
        if not lines or lines[0].replace(" ", "").lower() != "puzzle,solution":
            raise ValueError(f"{path}, line 1: expected the header 'Puzzle,Solution', got {lines[0][:40] if lines else ''!r}")
        out = []
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(re.fullmatch(r"[0-4]{16}", p) for p in parts):
                raise ValueError(f"{path}, line {n}: expected two 16-digit strings 'puzzle,solution', got {line[:50]!r}")
            puzzle, sol = parts
            if not valid_grid(sol) or any(p != "0" and p != s for p, s in zip(puzzle, sol)):
                raise ValueError(f"{path}, line {n}: the solution is not a valid grid consistent with the puzzle")
            out.append({"puzzle": puzzle, "solution": sol})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ex["puzzle"] + "="
        grid = "\n".join(ex["puzzle"][4 * r: 4 * r + 4] for r in range(4))
        return ("Solve this 4x4 Sudoku. Fill every 0 with a digit from 1 to 4 so that each row, each column "
                "and each of the four 2x2 boxes contains 1, 2, 3 and 4 exactly once. The puzzle, row by row:\n"
                f"{grid}\nGive the completed grid as 16 digits read row by row, inside the answer tags.\n{FORMAT}")

    def reference(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ex["solution"]
        return f"<reasoning>\nEach blank takes the digit missing from its row, column and box.\n</reasoning>\n<answer>\n{ex['solution']}\n</answer>"

    def guess(self, text, style):
        """16 characters the verifier reads: the tiny completion's digits, or the digits of the last
        <answer> (official semantics), padded with '0' / cut to 16."""
        source = text if style == "tiny" else (last_answer(text) or "")
        digits = re.sub(r"\D", "", source)[:16]
        return digits.ljust(16, "0")

    def details(self, text, ex, style):
        guess, blanks = self.guess(text, style), [i for i, c in enumerate(ex["puzzle"]) if c == "0"]
        right = sum(guess[i] == ex["solution"][i] for i in blanks)
        return {"correct_cells": right, "blank_cells": len(blanks), "solved": float(right == len(blanks))}

    def score(self, text, ex, style):
        d = self.details(text, ex, style)
        return d["correct_cells"] / d["blank_cells"] if d["blank_cells"] else 1.0


# ----------------------------------------------------------------------------------------------
# Arithmetic without eval: integers, + - * / and parentheses, in exact fractions.

MAX_EXPR_CHARS, MAX_LITERAL = 200, 10 ** 9


class ParseError(ValueError):
    pass


def parse_arithmetic(text):
    """(value as Fraction, list of the integer literals) of an arithmetic expression.

    Grammar: expr = term (('+'|'-') term)* ; term = factor (('*'|'/') factor)* ;
    factor = ('+'|'-') factor | integer | '(' expr ')'. '×', '÷' and 'x' between numbers are read as
    '*' and '/'. Raises ParseError on anything else, on division by zero, on literals above
    10⁹ and on inputs longer than 200 characters, so a hostile string costs microseconds."""
    if len(text) > MAX_EXPR_CHARS:
        raise ParseError("expression too long")
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    tokens = re.findall(r"\d+|[-+*/()]|\S", text)
    pos, literals = 0, []

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr(depth):
        if depth > 50:
            raise ParseError("nested too deeply")
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth):
        value = factor(depth)
        while peek() in ("*", "/"):
            op, rhs = take(), factor(depth)
            if op == "/" and rhs == 0:
                raise ParseError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(depth):
        tok = peek()
        if tok in ("+", "-"):
            take()
            return factor(depth + 1) * (1 if tok == "+" else -1)
        if tok == "(":
            take()
            value = expr(depth + 1)
            if peek() != ")":
                raise ParseError("unbalanced parenthesis")
            take()
            return value
        if tok is not None and tok.isdigit() and tok.isascii():
            take()
            if len(tok) > 10 or int(tok) > MAX_LITERAL:
                raise ParseError("number too large")
            literals.append(int(tok))
            return Fraction(int(tok))
        raise ParseError(f"unexpected {tok!r}")

    value = expr(0)
    if pos != len(tokens):
        raise ParseError(f"unexpected {tokens[pos]!r}")
    return value, literals


# ----------------------------------------------------------------------------------------------
# Countdown (3 numbers)

def solve_countdown(numbers):
    """{integer value: an expression using every number exactly once} over + - * / and any order."""
    def combos(items):  # items: list of (Fraction value, expression string)
        if len(items) == 1:
            yield items[0]
            return
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            results = [(a + b, f"{ea}+{eb}"), (a - b, f"{ea}-({eb})" if "+" in eb or "-" in eb else f"{ea}-{eb}"),
                       (a * b, f"({ea})*({eb})")]
            if b != 0:
                results.append((a / b, f"({ea})/({eb})"))
            for r in results:
                yield from combos(rest + [r])

    found = {}
    for value, e in combos([(Fraction(n), str(n)) for n in numbers]):
        if value.denominator == 1 and value > 0 and int(value) not in found:
            found[int(value)] = _simplify(e)
    return found


def _simplify(expression):
    """Drop parentheses around single numbers, which the solver adds generously."""
    return re.sub(r"\((\d+)\)", r"\1", expression)


class Countdown(Task):
    name, styles = "countdown", STYLES
    low, high = 1, 30  # small numbers keep the tiny model's prompt and answer within 16 characters

    def examples(self, split, n, seed):
        """n (numbers, target) pairs; the target is drawn among the values the solver reaches.
        Train and test use different number triples (test: sorted triples with an odd hash)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng, out = random.Random(f"countdown-{split}-{seed}"), []
        while len(out) < n:
            nums = [rng.randint(self.low, self.high) for _ in range(3)]
            if (sum(v * 31 ** k for k, v in enumerate(sorted(nums))) % 5 == 0) != (split == "test"):
                continue
            solutions = solve_countdown(nums)
            target = rng.choice(sorted(solutions))
            out.append({"numbers": nums, "target": target, "reference": solutions[target]})
        return out

    def load(self, path):
        """Official JSONL {"input": "a,b,c", "output": "t"} or Countdown-Tasks {"nums": [...], "target": t}."""
        out = []
        for n, row in read_jsonl(path, "countdown", [("input", "nums"), ("output", "target")]):
            try:
                nums = row["nums"] if "nums" in row else [x for x in str(row["input"]).split(",")]
                nums = [int(x) for x in nums]
                target = int(row["target"] if "target" in row else row["output"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {n}: numbers and target must be integers, got {row}") from None
            out.append({"numbers": nums, "target": target})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        if style == "tiny":
            return ",".join(map(str, ex["numbers"])) + f">{ex['target']}="
        return (f"Using the numbers {ex['numbers']}, write an equation that equals {ex['target']}. You may use "
                "+, -, * and / and parentheses, and must use each number exactly once. Put only the equation "
                f"(for example (1+2)*3) inside the answer tags.\n{FORMAT}")

    def reference(self, ex, style):
        self._check_style(style)
        expr = ex.get("reference") or solve_countdown(ex["numbers"]).get(ex["target"])
        if expr is None:
            raise ValueError(f"countdown target {ex['target']} is not reachable from {ex['numbers']}")
        return expr if style == "tiny" else f"<reasoning>\nTry the operations in turn.\n</reasoning>\n<answer>\n{expr}\n</answer>"

    def details(self, text, ex, style):
        return {"solved": float(self.score(text, ex, style) == 1.0)}

    def score(self, text, ex, style):
        """1.0 if the equation uses exactly the given numbers and equals the target; 0.1 if there is an
        equation that does not; 0 if there is none (official semantics)."""
        equation = text.strip() if style == "tiny" else last_answer(text)
        if not equation:
            return 0.0
        equation = equation.split("=")[0]  # "3*5+7 = 22" states the target too
        try:
            value, literals = parse_arithmetic(equation)
        except ParseError:
            return 0.1
        if sorted(literals) != sorted(ex["numbers"]):
            return 0.1
        return 1.0 if abs(value - ex["target"]) < Fraction(1, 100000) else 0.1


# ----------------------------------------------------------------------------------------------
# GSM8K

def parse_number(text):
    """A Fraction from '1,234', '$5', '3.50', '-2', '7/2'; None if `text` is not one number."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,30}(\.\d{1,30})?", t) or re.fullmatch(r"-?\d{1,30}/\d{1,30}", t):
        try:
            return Fraction(t)
        except (ValueError, ZeroDivisionError):
            return None
    return None


class GSM8K(Task):
    name = "gsm8k"

    def __init__(self, xml_terms=False):
        # the official XML variant adds format terms: correctness 2.0 + integer 0.5 + strict 0.5 +
        # soft format 0.5 + tag count 0.5 = 4.0
        self.xml_terms = xml_terms
        self.name, self.max_score = ("gsm8k-xml", 4.0) if xml_terms else ("gsm8k", 1.0)

    def load(self, path):
        out = []
        for n, row in read_jsonl(path, "gsm8k", ["question", "answer"]):
            solution, sep, final = str(row["answer"]).rpartition("####")
            if not sep or parse_number(final) is None:
                raise ValueError(f"{path}, line {n}: the answer must end with '#### <number>', got {str(row['answer'])[-40:]!r}")
            out.append({"question": row["question"], "answer": final.strip().replace(",", ""), "solution": solution.strip()})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        return f"{ex['question']}\nThink step by step, then give only the final number inside the answer tags.\n{FORMAT}"

    def reference(self, ex, style):
        self._check_style(style)
        return f"<reasoning>\n{ex.get('solution', '')}\n</reasoning>\n<answer>\n{ex['answer']}\n</answer>"

    def correct(self, text, ex):
        """The last <answer> (or, without tags, the last number of the text) equals the reference."""
        ans = last_answer(text)
        if ans is None:
            numbers = re.findall(r"-?[\d,]*\.?\d+", text[-2000:])
            ans = numbers[-1] if numbers else ""
        got, want = parse_number(ans), parse_number(ex["answer"])
        return got is not None and got == want

    def details(self, text, ex, style):
        return {"correct": float(self.correct(text, ex))}

    def score(self, text, ex, style):
        right = self.correct(text, ex)
        if not self.xml_terms:
            return float(right)
        ans = last_answer(text) or ""
        strict = re.fullmatch(r"\s*<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*", text, flags=re.DOTALL)
        soft = re.search(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text, flags=re.DOTALL)
        tags = sum(0.125 for tag in ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>") if text.count(tag) == 1)
        return 2.0 * right + 0.5 * bool(re.fullmatch(r"-?\d+", ans)) + 0.5 * bool(strict) + 0.5 * bool(soft) + tags


# ----------------------------------------------------------------------------------------------
# MATH500

def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j]
    return None


def normalize_math(answer):
    """A canonical string for comparing final answers: no spacing, \\left/\\right, \\text units,
    degree and percent signs, dollar signs; \\dfrac/\\tfrac -> \\frac; \\frac12 -> \\frac{1}{2};
    simple numbers and fractions -> their exact value."""
    s = re.sub(r"^\\(?:text|mbox|mathrm)\{(.*)\}$", r"\1", answer.strip())  # an answer that is all text
    without_units = re.sub(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z\s]*\}", "", s)  # "5\text{ cm}" -> "5"
    s = without_units if without_units.strip() else s
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""),
                     ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\displaystyle", "")):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{(\d)\}(\d)", r"\\frac{\1}{\2}", s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m and int(m.group(3)) != 0:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if s.startswith("0.") or s.startswith("-0.") or s[:1].isdigit() or s[:1] == "-":
        value = parse_number(s)
        if value is not None:
            s = str(value)
    return s


class Math500(Task):
    name = "math500"

    def load(self, path):
        out = []
        for n, row in read_jsonl(path, "math500", ["problem", ("answer", "solution")]):
            answer = row.get("answer") or last_boxed(str(row.get("solution", "")))
            if not answer:
                raise ValueError(f"{path}, line {n}: no 'answer' field and no \\boxed{{}} in 'solution'")
            out.append({"problem": row["problem"], "answer": str(answer), "solution": row.get("solution", "")})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        return f"{ex['problem']}\nThink step by step and put the final answer in \\boxed{{}}.\n{FORMAT}"

    def reference(self, ex, style):
        self._check_style(style)
        return f"<reasoning>\n{ex.get('solution', '')}\n</reasoning>\n<answer>\n\\boxed{{{ex['answer']}}}\n</answer>"

    def details(self, text, ex, style):
        return {"correct": self.score(text, ex, style)}

    def score(self, text, ex, style):
        got = last_boxed(text[-20000:])
        return float(got is not None and normalize_math(got) == normalize_math(ex["answer"]))


# ----------------------------------------------------------------------------------------------
# Code, in a sandbox

SANDBOX_SECONDS, SANDBOX_MEMORY, SANDBOX_PROCESSES, SANDBOX_FILE_BYTES = 5, 1 << 30, 64, 1 << 20
NOBODY = 65534

# Runs inside the sandbox: the program, then each assert; the pass count is printed after a random
# token given on stdin, so text the program prints cannot be mistaken for the result.
_HARNESS = r"""
import json, sys
token = sys.stdin.readline().strip()
job = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
try:
    exec(compile(job["program"], "<completion>", "exec"), ns)
    loaded = True
except BaseException:
    loaded = False
passed = 0
for test in job["tests"] if loaded else []:
    try:
        exec(compile(test, "<test>", "exec"), ns)
        passed += 1
    except BaseException:
        pass
sys.stdout.write("\n" + token + " " + str(passed) + "\n")
"""


def _limit_child():
    """preexec_fn of the sandbox: own session, CPU / memory / process / file-size limits, and, when
    started as root, the unprivileged user `nobody` (so it cannot write outside its directory and
    the process limit applies)."""
    import resource
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (SANDBOX_SECONDS, SANDBOX_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (SANDBOX_MEMORY, SANDBOX_MEMORY))
    resource.setrlimit(resource.RLIMIT_FSIZE, (SANDBOX_FILE_BYTES, SANDBOX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (SANDBOX_PROCESSES, SANDBOX_PROCESSES))


def _world_executable(path):
    """Whether any user may run `path`: the file and every directory above it are executable by others."""
    import stat
    path = os.path.realpath(path)
    parts = [path] + [os.path.dirname(path)]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)
    except OSError:
        return False


def sandbox_python():
    """The interpreter the sandbox runs. Started as root, the sandbox becomes `nobody`, which needs an
    interpreter outside private directories: this one if it qualifies, else the system python3."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _world_executable(candidate):
            return candidate
    raise RuntimeError("the code sandbox runs as user 'nobody' when started as root, and found no python3 that "
                       "user may execute (this interpreter lives in a private directory); install a system "
                       "python3 in /usr/bin or run as an unprivileged user")


def _kill_group(pgid):
    for _ in range(100):  # a fork bomb may still be forking: repeat until the group is empty
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return


def run_sandboxed(program, tests, timeout=SANDBOX_SECONDS):
    """Number of `tests` (assert statements) that pass after running `program`, in a subprocess:
    `python -I` in a fresh temporary directory, an environment with nothing inherited, limits on
    CPU time, address space (1 GiB), processes and file size, its own session killed as a whole on
    timeout. Not isolated: the network and, when not started as root, files the user can write
    outside the directory (there is no filesystem namespace in plain Python)."""
    workdir = tempfile.mkdtemp(prefix="gdsd-sandbox-")
    token = secrets.token_hex(16)
    if os.geteuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sandbox_python(), "-I", "-c", _HARNESS], cwd=workdir, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_limit_child)
    try:
        job = token + "\n" + json.dumps({"program": program, "tests": list(tests)})
        out, _ = proc.communicate(job.encode("utf-8", "replace"), timeout=timeout)
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        _kill_group(proc.pid)
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    text = out.decode("utf-8", "replace")
    lines = [l for l in text.splitlines() if l.startswith(token + " ")]
    return int(lines[-1].split()[1]) if lines else 0


def last_python_block(text):
    """The last ```python fenced block (or the last fenced block of any language), or None."""
    blocks = re.findall(r"```(?:python|py)\s*\n(.*?)```", text, flags=re.DOTALL)
    blocks = blocks or re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    return blocks[-1] if blocks else None


class Code(Task):
    name = "code"

    def load(self, path):
        out = []
        for n, row in read_jsonl(path, "code", [("question", "text", "prompt"), ("test_cases", "test_list")]):
            tests = row.get("test_cases", row.get("test_list"))
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError(f"{path}, line {n}: 'test_cases' must be a non-empty list of assert strings")
            out.append({"question": row.get("question", row.get("text", row.get("prompt"))), "test_cases": tests,
                        "solution": row.get("solution", row.get("code", ""))})
        return out

    def prompt(self, ex, style):
        self._check_style(style)
        return (f"{ex['question']}\nWrite a Python solution. Put the complete code in one ```python block "
                f"inside the answer tags; it must pass tests such as:\n{ex['test_cases'][0]}\n{FORMAT}")

    def reference(self, ex, style):
        self._check_style(style)
        return f"<reasoning>\n</reasoning>\n<answer>\n```python\n{ex.get('solution', '')}\n```\n</answer>"

    def details(self, text, ex, style):
        return {"pass_all": float(self.score(text, ex, style) == 1.0)}

    def score(self, text, ex, style):
        program = last_python_block(text)
        if program is None:
            return 0.0
        return run_sandboxed(program, ex["test_cases"]) / len(ex["test_cases"])


# ----------------------------------------------------------------------------------------------

TASKS = {t.name: t for t in (Sudoku(), Countdown(), GSM8K(), GSM8K(xml_terms=True), Math500(), Code())}


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
