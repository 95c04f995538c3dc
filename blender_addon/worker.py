"""One background thread for the add-on's heavy numpy work (no bpy): control maps, PNG encoding,
projection, blending, the bake.

The main thread hands it a plain function with plain data (`submit`) and polls the returned
`Task` from its timer step; the function never touches Blender data. Work that comes in slices
(a generator, see slices.py) is run slice by slice, so a cancelled task stops at the next slice
and no slice holds the interpreter for long (numpy releases the GIL in its loops; between slices
the main thread always gets its turn). One thread, so tasks run in the order they were given and
never race on the same arrays. It is a daemon thread: quitting Blender never waits for it.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from typing import Any, Callable


class TaskCancelled(Exception):
    """The task was cancelled before it finished."""


class Task:
    """A unit of work on the worker thread: poll `done`, then read `result()` (which raises the
    task's error, or TaskCancelled). `seconds` is the time it ran on the worker."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, label: str) -> None:
        self.fn, self.args, self.kwargs, self.label = fn, args, kwargs, label
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the task to stop (at its next slice); `result()` then raises TaskCancelled."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> Any:
        if not self.done:
            raise RuntimeError(f"task {self.label!r} has not finished")
        if self._error is not None:
            raise self._error
        return self._value

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            if self.cancelled:
                raise TaskCancelled(self.label)
            value = self.fn(*self.args, **self.kwargs)
            if inspect.isgenerator(value):
                value = self._drive(value)
            self._value = value
        except BaseException as exc:  # handed to the main thread, which reports it
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()

    def _drive(self, steps: Any) -> Any:
        while True:
            if self.cancelled:
                steps.close()
                raise TaskCancelled(self.label)
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value
            time.sleep(0)  # let the main thread take the interpreter between slices


class Worker:
    def __init__(self, name: str = "latentbridge-work") -> None:
        self.name = name
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, label: str = "", **kwargs: Any) -> Task:
        """Run `fn(*args, **kwargs)` on the worker thread. A function that returns a generator of
        slices (`*_steps`) is driven slice by slice; its return value is the task's result."""
        task = Task(fn, args, kwargs, label or getattr(fn, "__name__", "task"))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._queue = queue.Queue()  # a thread of its own, with a queue of its own
                self._thread = threading.Thread(target=self._loop, args=(self._queue,), name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(task)
        return task

    @staticmethod
    def _loop(tasks: "queue.Queue[Task | None]") -> None:
        while True:
            task = tasks.get()
            if task is None:
                return
            task._run()

    def stop(self) -> None:
        """End the thread after the task it runs; tasks still queued end cancelled."""
        with self._lock:
            thread, tasks, self._thread = self._thread, self._queue, None
        while True:
            try:
                task = tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task.cancel()
                task._run()
        if thread is not None:
            tasks.put(None)


worker = Worker()
