# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Secrets masked in every string that leaves a module, whatever echoed them.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

AnsibleModule masks the values of ``no_log`` options in a module's result, but not in what a module writes to files
(the phase ledger, report.json, the guard's records) nor in what the module says before its result exists. A tool
may echo its own command line (butil does, in an error), so a password can come back inside any output. One helper,
used at every exit: ``mask`` for a string, ``mask_data`` for a nested structure. The secret values come from the
module's ``no_log_values`` (every ``no_log`` option) or from the caller (the guard's login arguments).

Masking happens before an output is cut to its tail: a tail cut first could keep a fragment of a password that the
whole text would have matched.
"""

from __future__ import annotations

import typing as t

MASK = "********"


def secret_values(values: t.Iterable[t.Any]) -> t.List[str]:
    """The non-empty string values, longest first (so that a secret inside a longer one is masked by the longer)."""
    found = set()
    for value in values or ():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value:
            found.add(value)
    return sorted(found, key=lambda value: (-len(value), value))


def mask(text: t.Any, secrets: t.Iterable[t.Any]) -> t.Any:
    """``text`` with every occurrence of every secret replaced by ``********``; anything but a string as it is."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return text
    for secret in secret_values(secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_data(data: t.Any, secrets: t.Iterable[t.Any]) -> t.Any:
    """A copy of ``data`` (dicts, lists, tuples, strings) with every string masked, keys included."""
    values = secret_values(secrets)
    if not values:
        return data
    return _mask_data(data, values)


def _mask_data(data: t.Any, values: t.List[str]) -> t.Any:
    if isinstance(data, (str, bytes)):
        return mask(data, values)
    if isinstance(data, dict):
        return {mask(key, values): _mask_data(value, values) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_mask_data(item, values) for item in data]
    return data


def module_secrets(module: t.Any) -> t.List[str]:
    """The values of a module's ``no_log`` options (what AnsibleModule itself masks in the result)."""
    return secret_values(getattr(module, "no_log_values", None) or ())
