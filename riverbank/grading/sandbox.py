"""Calling a learner's function safely: a time limit, bounded output, and the learner's own failing line."""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import io
import linecache
import signal
import sys
import sysconfig
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                     sysconfig.get_paths()["platlib"]}
)


class TimeLimitExceeded(BaseException):
    """Raised inside the learner's code when its time is up.

    A BaseException, like KeyboardInterrupt, so that ``except Exception:`` in learner code does
    not swallow it.
    """


class BoundedText(io.TextIOBase):
    """A write-only text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int = 2000):
        self.limit, self.kept, self.total = limit, [], 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text = str(text)
        room = self.limit - sum(map(len, self.kept))
        if room > 0:
            self.kept.append(text[:room])
        self.total += len(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.kept)


@dataclass
class Outcome:
    """What happened when the learner's function was called."""

    value: Any = None
    error: BaseException | None = None
    error_line: str | None = None  # "line 3, in attention_weights: scores = Q @ K"
    error_function: str | None = None  # the learner's function whose line raised
    error_source: str | None = None  # that line's code alone: "scores = Q @ K"
    error_lineno: int | None = None
    timed_out: bool = False
    printed: str = ""
    printed_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


def _is_learner_frame(filename: str) -> bool:
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    if path.startswith(_PACKAGE_DIR) or path.startswith(_LIBRARY_DIRS):
        return False
    return not filename.startswith("<frozen")


def learner_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The deepest traceback frame that is the learner's code (a notebook cell), not a library's."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if _is_learner_frame(f.filename)]
    return frames[-1] if frames else None


def frame_source(frame: traceback.FrameSummary) -> str:
    return (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()


def describe_frame(frame: traceback.FrameSummary) -> str:
    code = frame_source(frame)
    return f"line {frame.lineno}, in {frame.name}: {code}" if code else f"line {frame.lineno}, in {frame.name}"


def signature_problem(fn: Callable, arg_names: tuple[str, ...]) -> str | None:
    """A message if ``fn`` cannot be called with the exercise's arguments, else None."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins and C functions: just try calling them
    try:
        sig.bind(*arg_names)
    except TypeError:
        want = ", ".join(arg_names)
        return f"your function takes ({', '.join(sig.parameters)}) but is called with ({want})"
    return None


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise TimeLimitExceeded in the main thread after ``seconds``, then every 0.1 s until left.

    Repeating the alarm gets out of learner code that catches and ignores the first one.
    Jupyter and Colab kernels run cells in the main thread, where signals are delivered.
    """

    def on_alarm(signum, frame):
        raise TimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(fn: Callable, args: tuple, seconds: float) -> tuple[Any, BaseException | None, bool]:
    """Fallback outside the main thread: run in a helper thread and interrupt it when time is up."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as error:  # noqa: BLE001 - everything the learner raises is feedback
            box["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(TimeLimitExceeded))
        worker.join(1.0)
        return None, None, True
    error = box.get("error")
    return box.get("value"), error, isinstance(error, TimeLimitExceeded)


def call_safely(fn: Callable, args: tuple, time_limit: float, print_limit: int = 2000) -> Outcome:
    """Call ``fn(*args)`` and report what happened, whatever the function does. Never raises
    (except KeyboardInterrupt, so that the learner can still stop a cell)."""
    out = BoundedText(print_limit)
    outcome = Outcome()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if threading.current_thread() is threading.main_thread():
                with _alarm(time_limit):
                    outcome.value = fn(*args)
            else:
                outcome.value, outcome.error, outcome.timed_out = _call_in_thread(fn, args, time_limit)
    except TimeLimitExceeded:
        outcome.timed_out = True
    except KeyboardInterrupt:
        raise
    except SystemExit as error:
        outcome.error = error
    except BaseException as error:  # noqa: BLE001 - everything the learner raises is feedback
        outcome.error = error
    if outcome.error is not None:
        frame = learner_frame(outcome.error)
        if frame is not None:
            outcome.error_line, outcome.error_function = describe_frame(frame), frame.name
            outcome.error_source, outcome.error_lineno = frame_source(frame), frame.lineno
        outcome.error.__traceback__ = None  # frees the learner's frames and tensors
    outcome.printed, outcome.printed_chars = out.getvalue(), out.total
    return outcome


@contextlib.contextmanager
def switched_off(entry_points, message: str):
    """Replace each ``(owner, name)`` attribute by a function that raises RuntimeError(message),
    and put the originals back afterwards, whatever happens: for checks whose point is that the
    learner writes what a library would do (a softmax, a gradient)."""

    def refuse(*args, **kwargs):
        raise RuntimeError(message)

    saved = [(owner, name, getattr(owner, name)) for owner, name in entry_points]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
