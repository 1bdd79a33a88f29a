"""The sandbox child for python graders: `python -I python_child.py` (standard library only, on purpose).

It reads one JSON line of set-up ({"source", "memory_mb", "cpu_seconds", "folder"}), locks itself down, then
answers one JSON line per JSON request line ({"sample", "item"} -> {"score"} or {"error"}). The lock-down,
in order: resource limits (address space, file size, open files, processes, no core files), a network
namespace of its own when the kernel allows one (no interface but a dead loopback), the temporary folder as
working directory and an empty environment, then an audit hook that refuses sockets, new processes,
signals to others, native code (ctypes), changing limits, and any file outside the temporary folder (reading the standard
library to import it excepted). The parent sets the CPU-time limit before each call (prlimit), adds a
wall-clock limit, and restarts a child that died.
"""

import json
import math
import os
import resource
import sys
import threading
import time
import traceback

BLOCKED_MODULES = {
    "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess", "multiprocessing",
    "_multiprocessing", "pty", "fcntl", "mmap", "select", "selectors", "asyncio", "signal", "_signal",
    "urllib", "http", "ftplib", "smtplib", "telnetlib", "xmlrpc", "socketserver",
}  # fmt: skip
BLOCKED_EVENTS = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.setuid", "os.chroot", "os.putenv", "os.unsetenv", "ctypes.", "pty.", "resource.",
    "sys.addaudithook", "sys.setprofile", "sys.settrace", "shutil.", "webbrowser.",
    "os.link", "os.symlink", "os.truncate", "os.chmod", "os.chown", "os.chflags", "os.mkfifo", "os.mknod",
    "gc.get_referrers", "gc.get_referents", "gc.get_objects", "code.__new__",
)  # fmt: skip
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chdir"}
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the grader's own print() and input() go nowhere, not into the answers
        os.dup2(devnull, fd)
    setup = json.loads(requests.readline())
    folder = setup["folder"]
    _end_with_parent(setup.get("parent"))
    _limit(setup["memory_mb"])
    _own_network()
    os.chdir(folder)
    os.environ.clear()
    os.environ["HOME"] = folder
    _lock(folder, [requests.fileno(), reply.fileno()])
    namespace: dict[str, object] = {"__name__": "grader"}
    try:
        exec(compile(setup["source"], "grader.py", "exec"), namespace)  # the user's grader, in this sandbox only
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
    except BaseException as exc:  # noqa: BLE001 - any failure is the grader's and is reported
        reply.write(json.dumps({"setup_error": _describe(exc)}) + "\n")
        return
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in requests:
        request = json.loads(line)
        try:
            score = grade(request["sample"], request["item"])
            answer = _score(score)
        except MemoryError:
            answer = {"error": f"ran out of memory (limit {setup['memory_mb']} MB)"}
        except BaseException as exc:  # noqa: BLE001
            answer = {"error": _describe(exc)}
        reply.write(json.dumps(answer) + "\n")


def _end_with_parent(parent: object) -> None:
    """End this child as soon as the process that started it is gone: a worker killed with -9 while a grader
    sleeps or loops must not leave the grader running (the child has a session of its own, so no group kill
    reaches it)."""
    if not isinstance(parent, int):
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _score(value: object) -> dict[str, object]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {"error": f"grade() returned {type(value).__name__}, not a number"}
    if not math.isfinite(value):
        return {"error": f"grade() returned {value}, not a finite number"}
    return {"score": float(value)}


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "grader.py"]
    where = f" (line {frames[-1].lineno})" if frames else ""
    return ("".join(lines).strip() + where)[:1000]


def _limit(memory_mb: int) -> None:
    limits = [
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        (resource.RLIMIT_FSIZE, 16 * 1024 * 1024),
        (resource.RLIMIT_NOFILE, 32),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, 0 if os.getuid() != 0 else resource.getrlimit(resource.RLIMIT_NPROC)[0]),
    ]
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))  # the hard limit too: nothing in here may raise it


def _own_network() -> None:
    """A network namespace of its own: no route anywhere. Needs root or unprivileged user namespaces; where
    neither is allowed the audit hook still refuses every socket."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET if os.getuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        libc.unshare(flags)
    except Exception:  # noqa: BLE001, S110 - the audit hook is the guard that always holds
        pass
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED_MODULES:
            del sys.modules[name]


def _lock(folder: str, own_fds: list[int]) -> None:
    folder = os.path.realpath(folder)
    library = os.path.realpath(os.path.dirname(os.__file__))

    def inside(path: str, root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "import" and args and str(args[0]).split(".")[0] in BLOCKED_MODULES:
            raise PermissionError(f"importing {args[0]} is not allowed in a grader")
        if event.startswith(BLOCKED_EVENTS):
            raise PermissionError(f"{event} is not allowed in a grader")
        if event in PATH_EVENTS and args:
            target = args[0]
            if isinstance(target, int):
                if target in own_fds:
                    raise PermissionError("that file is not allowed in a grader")
                return
            if target is None:
                return
            path = os.path.realpath(os.fsdecode(target))  # type: ignore[arg-type]
            writing = event != "open" or (len(args) > 1 and any(c in str(args[1] or "r") for c in "wax+"))
            if event == "open" and len(args) > 2 and isinstance(args[2], int):
                writing = writing or bool(args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if inside(path, folder) or (not writing and event in ("open", "os.listdir") and inside(path, library)):
                return
            raise PermissionError(f"{path} is outside the grader's folder")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
