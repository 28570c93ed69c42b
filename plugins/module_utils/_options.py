# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One check of every module's options, before anything runs: bad input is refused with a clear message.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

AnsibleModule checks types, choices and required options, but it accepts ``timeout: -5``, ``state_dir: run/btrieve``,
``file_number: -7`` and ``volume: "a\\nb"``. Those values then reach a shell-free command line, a path joined to the
current directory or a loop bound, and a module says nothing or fails late with a message about something else. So
every module calls ``check_options`` right after its AnsibleModule is built (after the phase ledger, where the module
has one, so that the refusal is recorded as the attempt's failure), in check mode too, and the same generic rules
hold for every option the argument spec declares, sub-options (``sink.device``, ``sources[2].path``) included:

- a ``path`` is absolute (after Ansible's ``~`` and ``$VAR`` expansion), because a relative path means whatever the
  module's current directory is on the host;
- an ``int`` or ``float`` is 0 or more (and finite): a count, a size, a number of seconds or days is never negative;
- a ``str`` or ``path``, and each ``str`` element of a list, is not empty (nor only blanks) and is one line without
  NUL: a line break or a NUL in a name, a path or a command-line argument is never meant.

A module declares its exceptions at the call site, each with a comment saying why: ``relative_ok`` (a path that is
relative to something the module defines), ``command_ok`` (a program given by its bare name and looked up on PATH, or
an absolute path), ``empty_ok`` (an empty string has a documented meaning), ``multiline_ok`` (a text, such as a
message) and ``minimum`` (a lowest value other than 0: 1 where 0 means nothing, -1 where -1 is a documented
"not known"). Exceptions name an option as the spec nests it: ``sink.volume``, ``sources.dest``.

``raw`` options and dicts without declared sub-options are the module's own to check (their shape is its contract).
"""

from __future__ import annotations

import math
import os
import typing as t

Names = t.Iterable[str]


class Rules:
    """The exceptions one module declares, by option name as the spec nests it (``sink.volume``)."""

    def __init__(self, relative_ok: Names = (), command_ok: Names = (), empty_ok: Names = (), multiline_ok: Names = (),
                 minimum: t.Optional[t.Mapping[str, float]] = None, units: t.Optional[t.Mapping[str, str]] = None) -> None:
        self.relative_ok = frozenset(relative_ok)
        self.command_ok = frozenset(command_ok)
        self.empty_ok = frozenset(empty_ok)
        self.multiline_ok = frozenset(multiline_ok)
        self.minimum = dict(minimum or {})
        self.units = dict(units or {})


def check_options(module: t.Any, relative_ok: Names = (), command_ok: Names = (), empty_ok: Names = (),
                  multiline_ok: Names = (), minimum: t.Optional[t.Mapping[str, float]] = None,
                  units: t.Optional[t.Mapping[str, str]] = None) -> None:
    """Fail the module (not retryable) on the first option that breaks a rule; return when every option is good.

    ``units`` says what a number counts (``seconds``), for the message only.
    """
    rules = Rules(relative_ok, command_ok, empty_ok, multiline_ok, minimum, units)
    problem = options_problem(module.argument_spec, module.params, rules)
    if problem:
        module.fail_json(msg=problem, retryable=False)


def options_problem(spec: t.Mapping[str, t.Any], params: t.Mapping[str, t.Any], rules: Rules,
                    key_prefix: str = "", name_prefix: str = "") -> t.Optional[str]:
    """The first broken rule among ``spec``'s options in ``params``, as a message; None when all are good.

    ``key_prefix`` is the nesting as exceptions name it (``sources.``), ``name_prefix`` as the message names the value
    (``sources[2].``).
    """
    for option in spec:
        entry = spec[option] or {}
        value = params.get(option) if isinstance(params, dict) else None
        if value is None:
            continue
        key, name = key_prefix + option, name_prefix + option
        problem = _value_problem(entry, value, key, name, rules)
        if problem:
            return problem
    return None


def _value_problem(entry: t.Mapping[str, t.Any], value: t.Any, key: str, name: str, rules: Rules) -> t.Optional[str]:
    kind = entry.get("type", "str")
    secret = bool(entry.get("no_log"))
    if kind == "list":
        elements = entry.get("elements")
        for index, element in enumerate(value if isinstance(value, list) else ()):
            item = "%s[%d]" % (name, index)
            if elements == "dict" and entry.get("options") and isinstance(element, dict):
                problem = options_problem(entry["options"], element, rules, key + ".", item + ".")
            elif elements in ("str", "path", "int", "float") and element is not None:
                problem = _scalar_problem(elements, element, key, item, rules, secret, "remove the empty element")
            else:
                problem = None
            if problem:
                return problem
        return None
    if kind == "dict":
        if entry.get("options") and isinstance(value, dict):
            return options_problem(entry["options"], value, rules, key + ".", name + ".")
        return None
    if kind in ("str", "path", "int", "float"):
        leave_out = "" if entry.get("required") else ", or leave %s out" % name
        return _scalar_problem(kind, value, key, name, rules, secret, "give a value" + leave_out)
    return None  # raw, bool, bytes, ...: no generic rule


def _scalar_problem(kind: str, value: t.Any, key: str, name: str, rules: Rules, secret: bool,
                    if_empty: str) -> t.Optional[str]:
    if kind in ("int", "float"):
        return _number_problem(value, key, name, rules)
    if not isinstance(value, str):
        return None
    found = "a value (not shown: %s is no_log)" % name if secret else repr(value)
    if not value.strip():
        if key in rules.empty_ok:
            return None
        return "%s must not be empty; found %s. %s" % (name, found, if_empty[0].upper() + if_empty[1:])
    if "\x00" in value or (("\n" in value or "\r" in value) and key not in rules.multiline_ok):
        return ("%s must be one line without NUL characters; found %s. Remove the line break (or NUL): it is never part "
                "of a name, a path or a command-line argument" % (name, found))
    if kind == "path" and not os.path.isabs(value) and key not in rules.relative_ok:
        if key in rules.command_ok:
            if "/" not in value:
                return None
            return ("%s must be an absolute path or a bare program name looked up on PATH; found %s. Give the program's "
                    "full path, such as /usr/sbin/%s, or only its name" % (name, found, os.path.basename(value)))
        return ("%s must be an absolute path; found %s. Give the full path, starting with /: a relative path would "
                "depend on the module's working directory on the host" % (name, found))
    return None


def _number_problem(value: t.Any, key: str, name: str, rules: Rules) -> t.Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    unit = rules.units.get(key)
    if isinstance(value, float) and not math.isfinite(value):
        return "%s must be a finite number; found %r. Give a number%s" % (name, value, " of " + unit if unit else "")
    lowest = rules.minimum.get(key, 0)
    if value >= lowest:
        return None
    wanted = "%s or more%s" % (_number(lowest), " " + unit if unit else "")
    return "%s must be %s; found %r. Give %s of %s" % (
        name, wanted, value, "a whole number" if isinstance(value, int) else "a number", wanted)


def _number(value: float) -> str:
    return "%d" % value if float(value).is_integer() else "%g" % value
