"""Run at interpreter start when this folder is on PYTHONPATH (see l2c_local/resolve.py):
maps `*.oss-local.test` to 127.0.0.1 in a subprocess the tests start, then hands over
to any other sitecustomize the interpreter would have run."""
import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "l2c_local_resolve", os.path.join(os.path.dirname(_here), "resolve.py"))
_resolve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resolve)
_resolve.install()

# This module shadows any other sitecustomize; run the next one on sys.path, if any.
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_next = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _next is not None and _next.origin != __file__:
    _module = importlib.util.module_from_spec(_next)
    _next.loader.exec_module(_module)
