# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tape test seam: in a module's own Python process, the tape modules' kernel layer becomes the drive double.

Never used in production; nothing under plugins/ knows it exists. tape_fixtures.TAPE_DOUBLE_ENV puts this directory on
PYTHONPATH and names the double in CONSISTENT_BACKUP_TEST_TAPE_DOUBLE (files/fake_tape.py) for the tape tests only.
Ansible runs each module (AnsiballZ) as a new Python process that inherits that environment, so Python's startup
imports this file there (``site`` imports the first ``sitecustomize`` on sys.path) before the module's zipped
module_utils are on sys.path. It therefore cannot patch ``_tape`` at once: it adds an import hook that, right after
``plugins/module_utils/_tape.py`` has run, replaces its ``OPS_FACTORY`` with the double's ``make_ops`` - before any
module's ``from ..._tape import default_ops`` returns, so every tape call of that process goes to the double.

The interpreter's own sitecustomize (if any) still runs: this file loads it after installing the hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

DOUBLE_ENV = "CONSISTENT_BACKUP_TEST_TAPE_DOUBLE"
TAPE_MODULE = "ansible_collections.consistent.backup.plugins.module_utils._tape"
HERE = os.path.dirname(os.path.abspath(__file__))


def _load_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _SwapOps(importlib.abc.Loader):
    """Runs _tape as its own loader would, then points its ops factory at the double."""

    def __init__(self, loader, double_path):
        self.loader = loader
        self.double_path = double_path

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.OPS_FACTORY = _load_file("consistent_backup_tape_double", self.double_path).make_ops


class _TapeDoubleFinder(importlib.abc.MetaPathFinder):
    """Finds _tape with the other finders (in a module process: the zip of module_utils) and wraps its loader."""

    def __init__(self, double_path):
        self.double_path = double_path

    def find_spec(self, fullname, path, target=None):
        if fullname != TAPE_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _SwapOps(spec.loader, self.double_path)
                return spec
        return None


def _install():
    double = os.environ.get(DOUBLE_ENV)
    if double:
        sys.meta_path.insert(0, _TapeDoubleFinder(double))


def _chain_the_interpreters_sitecustomize():
    others = [entry for entry in sys.path if os.path.abspath(entry or ".") != HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.origin and os.path.dirname(os.path.abspath(spec.origin)) != HERE:
        _load_file("_consistent_backup_next_sitecustomize", spec.origin)


_install()
_chain_the_interpreters_sitecustomize()
