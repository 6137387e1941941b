"""The code task: the official format and correctness terms, and a sandbox no program can reach beyond
its own return values (the hack attempts a policy could learn, each scoring nothing)."""
import json
import os
import socket
import threading
import time

import pytest

import reward as R

TESTS = ["assert f(1) == 2", "assert f(-1) == 0", "assert f(10) == 11"]
CODE = {"question": "add one", "test_cases": TESTS}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid and namespace isolation need root (documented)")


def answer(program, before="Here it is.\n", after=""):
    return f"{before}```python\n{program}\n```{after}"


def reward(program, tests=TESTS, **kw):
    return R.get_task("code").reward(answer(program, **kw), dict(CODE, test_cases=tests), "chat")


GOOD = "def f(x):\n    return x + 1"

FORMAT = [  # (completion, official format term)
    (answer(GOOD), 1.0), (answer(GOOD, after="\n"), 1.0),
    (answer(GOOD, after="\n\n"), 0.0),                      # the block must end the text
    (answer(GOOD, after=" done"), 0.0),
    (answer(GOOD, before="```\nx\n```\n"), 0.0),            # another fence before it
    (answer(GOOD, before="`"), 0.0),                        # four backticks are not an opening fence
    ("```py\n" + GOOD + "\n```", 0.0), ("```python " + GOOD + "\n```", 0.0), (GOOD, 0.0), ("", 0.0),
    (answer("def f(x) return"), 0.5),                       # a syntax error
    (answer("  x = 1"), 1.0),                               # parsed after stripping, as the official does
    (answer("return 5"), 1.0),                              # the parser accepts it; running it fails
    (answer("x = '\0'"), 0.0),                              # the parser's ValueError
]


@pytest.mark.parametrize("text, term", FORMAT)
def test_the_format_term_is_the_official_one(text, term):
    block = R.code_block(text)
    verdict = R.run_program(block, [])[0] if block is not None else None
    assert {"ok": 1.0, "syntax error": 0.5}.get(verdict, 0.0) == term


def test_the_reward_adds_the_fraction_of_tests_passed_to_the_format():
    assert reward(GOOD) == 2.0
    assert reward("def f(x):\n    return 2") == pytest.approx(1 + 1 / 3)
    assert reward("def f(x) return") == 0.5 and reward("  def f(x):\n    return x + 1") == 1.0  # format only
    assert reward("import os\n" + GOOD) == 1.0                    # an unsafe module: no test runs (official)
    assert reward("x = 'threading'\n" + GOOD) == 1.0              # the official check is on the text
    assert R.get_task("code").reward(GOOD, CODE, "chat") == 0.0  # no block


def test_official_execution_semantics():
    # each test runs after a fresh copy of the program: state does not leak between tests
    counter = "n = 0\ndef f(x):\n    global n\n    n += 1\n    return x + n"
    assert reward(counter) == 2.0
    # no __name__ in the namespace: a main guard is skipped, as by the official executor
    assert reward(GOOD + "\nif __name__ == '__main__':\n    raise SystemExit(1)") == 2.0
    # the program's own names shadow builtins for the test, as in one shared namespace
    assert reward("def f(x):\n    return 0\ndef abs(x):\n    return 2", ["assert abs(f(1)) == 2"]) == 2.0
    # plain data crosses the boundary with its type: tuples, sets, dicts, bytes, floats, big ints, None
    program = ("def f(x):\n    return [(1, 2), {3}, {'a': b'x'}, 0.1 + 0.2, 2 ** 200, None, -0.0, float('inf'), 1j]")
    assert reward(program, ["assert f(0) == [(1, 2), {3}, {'a': b'x'}, 0.1 + 0.2, 2 ** 200, None, 0.0, float('inf'), 1j]",
                            "assert type(f(0)[0]) is tuple and f(0)[1] != [3]"]) == 2.0
    # objects the program makes are proxies: methods, attributes, items, iteration, len, str
    classes = ("class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, v):\n        self.items.append(v)\n"
               "        return self\n    def __len__(self):\n        return len(self.items)\n    def __iter__(self):\n"
               "        return iter(self.items)\n    def __str__(self):\n        return 'S' + str(self.items)\n")
    assert reward(classes, ["s = Stack()\ns.push(1).push(2)\nassert len(s) == 2 and list(s) == [1, 2] and s.items[-1] == 2",
                            "assert str(Stack().push(3)) == 'S[3]'", "assert sorted(x * 2 for x in Stack().push(2).push(1)) == [2, 4]"]) == 2.0
    # an exception crosses with its type, so a test can expect it
    assert reward("def f(x):\n    raise ValueError(x)", ["try:\n    f(1)\n    raise AssertionError\nexcept ValueError:\n    pass"]) == 2.0
    # one second per test (the official limit)
    assert reward("import time\ndef f(x):\n    time.sleep(3)\n    return x + 1", TESTS[:1]) == 1.0


# ---------------------------------------------------------------- what a policy could learn to exploit

# (the programs import `posix`, os's own module, and `_thread`: the texts "import os" and "threading"
# would make the official filter skip the program, and these must run)
HACKS = {
    # the attempts: reach the harness through __main__ and rewrite the tests or their count
    "rewrite the test list": "import sys\nm = sys.modules['__main__']\nfor v in vars(m).values():\n"
                             "    if isinstance(v, dict) and 'tests' in v:\n        v['tests'][:] = ['pass'] * 3\n",
    "extend the test list": "import sys\nm = sys.modules['__main__']\nfor v in list(vars(m).values()):\n"
                            "    if isinstance(v, list):\n        v.extend(['pass'] * 30)\n",
    "print forged results": "print('PASSED 3')\nprint('\\n' + 'a' * 32 + ' 1000000')\n",
    "forge on every descriptor": "import posix\nfor fd in range(3, 40):\n    try:\n        posix.write(fd, b'{\"ok\": true}\\n12 junk\\n\\x00\\n')\n"
                                 "    except OSError:\n        pass\n",
    "equal to everything": "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n",
    "an int that equals everything": "class Any(int):\n    def __eq__(self, other):\n        return True\n",
    "exit with success": "import posix\nposix._exit(0)\n",
    "raise SystemExit": "raise SystemExit(0)\n",
    "double fork and setsid": "import posix\ntry:\n    if posix.fork() == 0:\n        posix.setsid()\n        if posix.fork() == 0:\n"
                              "            import time\n            time.sleep(30)\nexcept OSError:\n    pass\n",
    "fork bomb": "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        break\n",
    "threads": "import _thread\ntry:\n    _thread.start_new_thread(print, ())\nexcept RuntimeError:\n    pass\n",
    "raise the limits": "import resource\nfor r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC):\n"
                        "    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n",
    "infinite loop": "while True:\n    pass\n",
    "ignore signals and sleep": "import signal, time\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
                                "    signal.signal(s, signal.SIG_IGN)\ntime.sleep(100)\n",
    "memory bomb": "x = bytearray(8 << 30)\n",
    "exponent bomb": "x = 9 ** 9 ** 9\n",
    "flood stdout": "import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 100000)\n",
    "a huge return value": None,  # set below: the reply is over the size limit
}


@pytest.mark.parametrize("name", sorted(HACKS))
def test_hack_attempts_score_nothing_for_a_wrong_program(name):
    program = HACKS[name] or "def f(x):\n    return 'x' * (8 << 20)\n"
    if name in ("equal to everything", "an int that equals everything"):
        program += "def f(x):\n    return Any()\n"
    elif name != "a huge return value":
        program += "def f(x):\n    return x - 1\n"  # wrong on every test
    start = time.time()
    r = reward(program)
    assert r <= 1.0  # the format term at most: no test passes
    assert time.time() - start < 15


@root_only
def test_nothing_of_a_sandbox_survives_its_scoring():
    program = HACKS["double fork and setsid"] + GOOD
    assert reward(program) == 2.0  # the fork fails, the rest of the program works
    sandbox_uids = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) >= 100000]
    assert sandbox_uids == []


def _uid(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration):
        return -1


@root_only
def test_the_sandbox_sees_no_secrets_files_or_network(tmp_path, monkeypatch):
    if "files" not in R.sandbox_isolation():
        pytest.skip("this kernel refuses a private mount namespace")
    monkeypatch.setenv("GDSD_SECRET_TOKEN", "hunter2")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    leak = "/tmp/gdsd-sandbox-leak-test"
    probes = {
        "environment": "import posix\nok = b'GDSD_SECRET_TOKEN' not in posix.environ",
        "project files": f"try:\n    open({os.path.join(ROOT, 'reward.py')!r}).read()\n    ok = False\nexcept OSError:\n    ok = True",
        "the caller's environ": f"try:\n    open('/proc/{os.getpid()}/environ').read()\n    ok = False\nexcept OSError:\n    ok = True",
        "network": f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n    ok = False\nexcept OSError:\n    ok = True",
        "scratch files": f"open({leak!r}, 'w').write('x')\nok = open({leak!r}).read() == 'x'",
        "big files": "try:\n    open('big', 'wb').write(b'x' * (4 << 20))\n    ok = False\nexcept OSError:\n    ok = True",
    }
    for name, probe in probes.items():
        assert reward(probe, ["assert ok"]) == 2.0, name
    assert not os.path.exists(leak) and not accepted
    server.close()


def test_the_scoring_process_is_unharmed_by_hostile_replies():
    """Whatever the sandbox writes back, the parent only decodes plain data within limits."""
    for value in ([[[[]]]] * 3, "x" * 100, {"a": (1, {2})}):
        program = f"def f(x):\n    return {value!r}"
        assert reward(program, [f"assert f(0) == {value!r}"]) == 2.0
    deep = "def f(x):\n    v = []\n    for _ in range(500):\n        v = [v]\n    return v"
    assert reward(deep, ["assert f(0) is not None"]) == 2.0  # too deep for plain data: a proxy, still usable


def test_the_code_verifier_never_raises_on_hostile_text():
    from test_reward import hostile_strings
    task = R.get_task("code")
    texts = hostile_strings(10000) + [answer(p) for p in ("9**9**9", "1/0", "__import__('os').system('true')", "\0")]
    for text in texts:
        assert 0.0 <= task.reward(text, CODE, "chat") <= 2.0


def test_code_loader_and_grade(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"question": "q", "test_list": ["assert True"], "solution": GOOD}) + "\n")
    ex = R.get_task("code").load(str(f))[0]
    assert ex["test_cases"] == ["assert True"]
    ref = R.get_task("code").reference(ex, "chat")
    assert R.get_task("code").grade(ref, ref, ex, "chat") == {"reward": 2.0, "correct": 1.0, "total": 1, "answered": 1.0}
    f.write_text(json.dumps({"question": "q", "test_cases": []}) + "\n")
    with pytest.raises(ValueError, match="line 1: 'test_cases' must be a non-empty list"):
        R.get_task("code").load(str(f))
