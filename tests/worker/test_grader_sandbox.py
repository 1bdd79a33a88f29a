"""Python graders run in a capped child: each hostile grader scores 0 with a plain reason, nothing escapes,
and the next sample is scored by a fresh child (the sandbox, and the process that holds it, keep going)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from worker.graders.python_sandbox import GraderSourceError, PythonSandbox, SandboxLimits
from worker.graders.scoring import Scorer
from worker.graders.spec import parse_grader

LIMITS = SandboxLimits(seconds=3, cpu_seconds=1, memory_mb=256)
FAIR = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['answer'] else 0.25\n"


def _fair_after(sandbox: PythonSandbox) -> None:
    """The sandbox still scores correctly after whatever the grader did."""
    sandbox.source = FAIR
    sandbox.close()
    assert sandbox.score({"output_text": "42"}, {"answer": "42"}).score == 1.0


@pytest.fixture
def listener():
    """A port on loopback that records any connection: a grader must never reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    reached = []

    def accept() -> None:
        while not stop.is_set():
            try:
                reached.append(server.accept())
            except OSError:
                continue

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], reached
    stop.set()
    thread.join()
    server.close()


def test_a_fair_grader_scores_and_its_files_stay_in_its_folder():
    source = FAIR + "def helper():\n    pass\nopen('notes.txt', 'w').write('kept')\n"
    with PythonSandbox(source, LIMITS) as sandbox:
        folder = sandbox.folder
        assert sandbox.score({"output_text": "42"}, {"answer": "42"}).score == 1.0
        assert sandbox.score({"output_text": "7"}, {"answer": "42"}).score == 0.25
        assert os.path.exists(os.path.join(folder, "notes.txt"))
    assert not os.path.exists(folder)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            "import socket\n    socket.create_connection(('127.0.0.1', PORT), timeout=1)",
            "importing socket is not allowed",
        ),
        ("import _socket\n    _socket.socket().connect(('127.0.0.1', PORT))", "importing _socket is not allowed"),
        ("return len(open('/etc/passwd').read())", "/etc/passwd is outside the grader's folder"),
        ("import os\n    return len(os.listdir('/'))", "is outside the grader's folder"),
        ("import os\n    os.system('touch /tmp/grader-escaped')", "os.system is not allowed"),
        ("import os\n    while True:\n        os.fork()", "os.fork is not allowed"),
        ("import ctypes", "importing ctypes is not allowed"),
        ("return 'yes'", "returned str, not a number"),
        ("return float('nan')", "not a finite number"),
        ("raise KeyError('answer')", "KeyError: 'answer' (line 2)"),
    ],
)
def test_hostile_graders_score_zero_with_the_reason(listener, body, reason):
    port, reached = listener
    source = f"def grade(sample, item):\n    {body.replace('PORT', str(port))}\n"
    with PythonSandbox(source, LIMITS) as sandbox:
        result = sandbox.score({"output_text": "x"}, {})
        assert result.score == 0.0 and reason in (result.error or "")
        _fair_after(sandbox)
    assert reached == [] and not os.path.exists("/tmp/grader-escaped")


def test_a_grader_that_never_ends_or_eats_memory_is_stopped():
    with PythonSandbox("def grade(sample, item):\n    while True:\n        pass\n", LIMITS) as sandbox:
        spin = sandbox.score({"output_text": "x"}, {})
        assert spin.score == 0.0 and ("CPU time" in spin.error or "took longer than 3 s" in spin.error)
        _fair_after(sandbox)
    with PythonSandbox("import time\ndef grade(sample, item):\n    time.sleep(60)\n", LIMITS) as sandbox:
        sleep = sandbox.score({"output_text": "x"}, {})
        assert sleep.score == 0.0 and sleep.error == "took longer than 3 s (the limit per answer)"
        assert sleep.seconds < 10
        _fair_after(sandbox)
    source = "def grade(sample, item):\n    block = bytearray(10 * 1024 ** 3)\n    return 1.0\n"
    with PythonSandbox(source, LIMITS) as sandbox:
        memory = sandbox.score({"output_text": "x"}, {})
        assert memory.score == 0.0 and memory.error == "ran out of memory (limit 256 MB)"
        _fair_after(sandbox)


def test_printing_cannot_forge_a_score():
    source = "def grade(sample, item):\n    print('{\"score\": 99}')\n    return 0.5\n"
    with PythonSandbox(source, LIMITS) as sandbox:
        assert sandbox.score({"output_text": "x"}, {}).score == 0.5


def test_a_source_that_cannot_load_says_why():
    with pytest.raises(GraderSourceError, match="SyntaxError"):
        PythonSandbox("def grade(sample, item)\n    return 1\n", LIMITS).start()
    with pytest.raises(GraderSourceError, match="no function grade"):
        PythonSandbox("def grader(sample, item):\n    return 1\n# def grade\n", LIMITS).start()


def test_python_grader_inside_a_multi_grader_reports_its_failure():
    grader = parse_grader(
        {
            "type": "multi",
            "name": "both",
            "graders": {
                "code": {"type": "python", "name": "code", "source": "def grade(sample, item):\n    return 1 / 0\n"},
                "exact": {
                    "type": "string_check",
                    "name": "exact",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                },
            },
            "calculate_output": "code + exact",
        }  # fmt: skip
    )
    with Scorer(grader, limits=LIMITS) as scorer:
        result = scorer.grade("42", {"answer": "42"})
    assert result.reward == 1.0 and result.sub_rewards == {"code": 0.0, "exact": 1.0}
    assert (
        result.errors["python_grader_runtime_error"]
        and "ZeroDivisionError" in result.details["python_grader_runtime_error"][0]
    )


HOLDER = """
import sys, time
from worker.graders.python_sandbox import PythonSandbox, SandboxLimits

sandbox = PythonSandbox(sys.argv[1], SandboxLimits(seconds=120))
sandbox.start()
print(sandbox.child.pid, flush=True)
print(sandbox.score({"output_text": "x"}, {}).score, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("grader", ["sleeps", "idles"])
def test_a_worker_killed_with_minus_9_leaves_no_grader_child(tmp_path, grader):
    """The child has a session of its own (no group kill reaches it) and a grader may sleep or loop: it ends
    itself when the process that started it is gone, whether it was grading or waiting for the next answer."""
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    from tests.waiting import wait_until

    wait = "time.sleep(120)" if grader == "sleeps" else "pass"
    source = f"import time\ndef grade(sample, item):\n    open('grading', 'w').close()\n    {wait}\n    return 1.0\n"
    (tmp_path / "holder.py").write_text(HOLDER)
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, str(tmp_path / "holder.py"), source],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert holder.stdout is not None
    child = psutil.Process(int(holder.stdout.readline()))
    if grader == "sleeps":  # killed while grade() runs
        started = Path(child.cwd()) / "grading"
        wait_until(started.exists, timeout=10, interval=0.05, what="the grader to start")
    else:  # killed while the child waits for the next answer
        assert holder.stdout.readline().strip() == b"1.0"
    holder.kill()
    holder.wait()
    holder.stdout.close()

    def gone() -> bool:
        try:
            return child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout=3, interval=0.05, what="the grader's child to end with its worker")
