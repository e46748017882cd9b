"""Where the suite's CPU goes (`make test-profile`): with this folder on PYTHONPATH and OIE_SUITE_PROFILE naming a
file, every Python process (the pytest-xdist workers and every command the tests start, which inherit both)
appends JSON lines to it: each XLA compilation (its program, seconds, whether JAX's persistent cache answered it)
and, at exit, the process's CPU seconds, each with the test that was running (PYTEST_CURRENT_TEST). Read by
report.py. Nothing here runs unless OIE_SUITE_PROFILE is set."""

import atexit
import importlib.abc
import importlib.util
import json
import os
import resource
import sys
import threading

LOG = os.environ.get("OIE_SUITE_PROFILE")
_state = threading.local()  # per thread: whether the compilation being timed came from the persistent cache
_lock = threading.Lock()


def _write(record: dict) -> None:
    record.update(pid=os.getpid(), test=os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
                  command=" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:3])))
    with _lock, open(LOG, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _state.hit = True


def _on_duration(event: str, seconds: float, **fields) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _write({"kind": "compile", "program": str(fields.get("fun_name", "")), "seconds": seconds,
                "cached": getattr(_state, "hit", False)})
        _state.hit = False


class _ListenWhenJaxLoads(importlib.abc.MetaPathFinder):
    """Registers the listeners as JAX's monitoring module loads: importing JAX here would cost a second to every
    process that never uses it (pytest's controller, the fake gcloud, pip)."""

    def find_spec(self, name, path=None, target=None):
        if name != "jax._src.monitoring":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.register_event_listener(_on_event)
            module.register_event_duration_secs_listener(_on_duration)

        spec.loader.exec_module = exec_module
        return spec


def _on_exit() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _write({"kind": "exit", "cpu": usage.ru_utime + usage.ru_stime, "pytest": "_pytest" in sys.modules})


if LOG:
    sys.meta_path.insert(0, _ListenWhenJaxLoads())
    atexit.register(_on_exit)
