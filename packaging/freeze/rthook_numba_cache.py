"""PyInstaller runtime hook: a persistent Numba cache for the `@njit(cache=True)` kernels of the frozen app.

In a one-file build every run extracts the app into a new temporary directory (sys._MEIPASS), and
code objects carry relative file names ("shepherd/monitoring/kernels.py"). Numba's own locators
then either find no writable place ("cannot cache function ...: no locator available"), or key the
cache on the current directory and stamp it with a hash of the whole executable. This hook puts one
locator in front of Numba's: cache files go to $NUMBA_CACHE_DIR, else $XDG_CACHE_HOME/shepherd/numba
(~/.cache/shepherd/numba), else <tmp>/shepherd-numba-<uid>, under the module's path inside the
bundle, and are stamped with the sha256 of the module's source, which the build collects next to its
bytecode (module_collection_mode "pyz+py" in shepherd.spec). So the second start loads the drift
kernels from disk (0.5-0.9 s) instead of compiling them again (about 40 s on 2 cores).

It patches `numba.core.caching` right after that module is imported, so commands that never touch
Numba do not pay for importing it, and it sets no environment variable a child process could inherit.
"""

import hashlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import warnings


def _cache_roots():
    if os.environ.get("NUMBA_CACHE_DIR"):
        yield os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    yield os.path.join(base, "shepherd", "numba")
    yield os.path.join(tempfile.gettempdir(), f"shepherd-numba-{os.getuid()}")


def _install(caching):
    class FrozenSourceLocator(caching._CacheLocator):
        """Cache of a function whose module source was collected into the bundle."""

        def __init__(self, py_func, source, root):
            self._source = source
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, os.path.relpath(os.path.dirname(source), sys._MEIPASS))

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            with open(self._source, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()

        def get_disambiguator(self):
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func, py_file):
            source = os.path.join(sys._MEIPASS, py_file) if not os.path.isabs(py_file) else py_file
            if not (source.startswith(sys._MEIPASS + os.sep) and os.path.isfile(source)):
                return None  # not ours (or its source was not collected): Numba's own locators decide
            for root in _cache_roots():
                self = cls(py_func, source, root)
                try:
                    self.ensure_cache_path()
                except OSError:
                    continue
                return self
            return None

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    impl._locator_classes = [FrozenSourceLocator, *impl._locator_classes]


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Run `_install` on numba.core.caching as soon as it has been executed, whoever imports it."""

    name = "numba.core.caching"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                inner.exec_module(module)
                try:
                    _install(module)
                except AttributeError as err:  # a Numba whose caching internals moved: keep its own locators
                    warnings.warn(f"shepherd: Numba cache locator not installed ({err})", RuntimeWarning, stacklevel=1)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
