# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input to every option of every module gets a clear message before anything runs, and never a traceback.

The table is built from each module's real argument spec (captured from its main()), so a new option is covered the
day it is added: every option, sub-options included (``sources[0].path``, ``sink.device``), gets the cases its type
calls for, each run in-process in check mode over a valid baseline of the module's required options:

- wrong type: an int or float given "abc", a bool "maybe", a list a dict, a dict "abc" (AnsibleModule refuses these);
- negative: -1 for a number (below the declared minimum where -1 has a meaning), and 0 where the minimum is 1;
- relative path: "relative/dir" for a path;
- empty: "" for a str or path, and an empty element of a list of str;
- newline: a line break in a str, a path or a list element;
- injection: shell syntax in a str (and in a raw option and a list element): refused naming the option, or accepted,
  but never run (no file is created) and never a traceback.

Each case must fail, naming the option, unless the table below (the modules' declared exceptions, with the reason)
says the value is allowed.
"""

from __future__ import annotations

import importlib
import os
import typing as t

import pytest

from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position

MODULES = ("aligned_copy", "backup_command", "backup_guard", "backup_set", "bdb_checkpoint", "bdb_verify",
           "btrieve_continuous", "mount_check", "pg_backup_session", "pg_restore", "tape_changer", "tape_set",
           "tape_status")
PACKAGE = "ansible_collections.consistent.backup.plugins.modules."
TMP = "@TMP@"  # replaced by the test's tmp_path


class _Captured(Exception):
    pass


def captured_spec(name: str) -> t.Dict[str, t.Any]:
    """The module's argument spec, as its main() gives it to AnsibleModule."""
    module = importlib.import_module(PACKAGE + name)
    spec: t.Dict[str, t.Any] = {}

    def capture(*args: t.Any, **kwargs: t.Any) -> None:
        spec.update(kwargs["argument_spec"])
        raise _Captured()

    real = module.AnsibleModule
    module.AnsibleModule = capture
    try:
        module.main()
    except _Captured:
        pass
    finally:
        module.AnsibleModule = real
    return spec


# A valid call of each module (check mode); paths under the test's tmp_path.
BASELINE: t.Dict[str, t.Dict[str, t.Any]] = {
    "aligned_copy": dict(dest=TMP + "/dest", backup_id="b1", sources=[{"path": TMP + "/src"}]),
    "backup_command": dict(argv=["true"]),
    "backup_guard": dict(engine="files", database="db1", backup_id="b1", run_id="r1", post={"none": True},
                         runtime_dir=TMP + "/run", job={"dest": TMP, "backup_id": "b1", "run_id": "r1"}),
    "backup_set": dict(dest=TMP, backup_id="b1", run_id="r1"),
    "bdb_checkpoint": dict(home=TMP + "/env"),
    "bdb_verify": dict(backup_dest=TMP),
    "btrieve_continuous": dict(files=[TMP + "/A.MKD"], state_dir=TMP + "/state", butil=TMP + "/butil"),
    "mount_check": dict(path=TMP),
    # A socket directory without a server: nothing on this machine is reached.
    "pg_backup_session": dict(login_host=TMP, runtime_dir=TMP + "/run"),
    "pg_restore": dict(backup_dest=TMP + "/sets", target=TMP + "/target", port=5499, wal_archive=TMP + "/wal"),
    "tape_changer": dict(changer=TMP + "/sg3", slot=1, mtx=TMP + "/mtx"),
    # verified in check mode reads nothing: today it reports the file it would read, whatever the number.
    "tape_set": dict(state="verified", device=TMP + "/nst0", catalog=TMP + "/catalog", set_path=TMP + "/set",
                     volume="V1"),
    "tape_status": dict(device=TMP + "/nst0"),
}

# The modules that take the job handle (meta/runtime.yml, action group job).
JOB_MODULES = ("aligned_copy", "backup_command", "backup_guard", "backup_set", "bdb_checkpoint", "bdb_verify", "btrieve_continuous",
               "pg_backup_session", "tape_set")

# The valid parent of each dict or list-of-dict option with sub-options, into which a sub-option's case goes.
PARENTS: t.Dict[t.Tuple[str, str], t.Dict[str, t.Any]] = {
    ("aligned_copy", "sources"): {"path": TMP + "/src"},
    ("aligned_copy", "sink"): {"kind": "tar", "device": TMP + "/nst0"},
    ("backup_command", "pre_window"): {"guard_dir": TMP + "/guard", "run_id": "r1", "timeout": 60},
    ("btrieve_continuous", "pre_window"): {"guard_dir": TMP + "/guard", "run_id": "r1", "timeout": 60},
    ("pg_backup_session", "pre_window"): {"guard_dir": TMP + "/guard", "run_id": "r1", "timeout": 60},
    ("bdb_checkpoint", "plan"): {"backup_id": "b1", "mode": "hot"},
    ("backup_guard", "open_set"): {"engine": "files"},
    ("backup_set", "disarm"): {"engine": "files", "database": "db1"},
    **{(module, "job"): {"dest": TMP + "/dest", "backup_id": "b1", "run_id": "r1"} for module in JOB_MODULES},
}

# Lowest values other than 0, as the modules declare them (the negative case goes below them).
MINIMUM: t.Dict[t.Tuple[str, str], int] = {
    ("aligned_copy", "sink.file_number"): -1,  # -1: not known, the sink asks the drive
    ("tape_set", "file_number"): -1,  # -1 (the default): not known; copied spaces to the end of data
    ("backup_command", "pre_window.timeout"): 1,
    ("btrieve_continuous", "pre_window.timeout"): 1,
    ("pg_backup_session", "pre_window.timeout"): 1,
    ("backup_guard", "max_quiesce"): 1,
    ("backup_guard", "retries"): 1,
    ("backup_guard", "post_timeout"): 1,
    ("backup_set", "owner_pid"): 1,  # no process has pid 0
    ("pg_backup_session", "login_port"): 1,
    ("pg_backup_session", "max_duration"): 1,
    ("pg_backup_session", "keepalive_interval"): 1,
    ("pg_restore", "port"): 1,
    ("tape_changer", "slot"): 1,  # mtx counts slots from 1
    ("bdb_checkpoint", "plan.full_every"): 1,  # a full set every 0 runs means nothing
}

# The declared exceptions: (module, option, case) -> why the value is allowed.
ALLOWED: t.Dict[t.Tuple[str, str, str], str] = {
    ("aligned_copy", "run_id", "empty"): "documented: when empty, any recorded list of the same sources is used again",
    ("aligned_copy", "sink.volume", "empty"): "the default; the volume's name is only recorded",
    ("btrieve_continuous", "user", "empty"): "the default: an engine without security takes no login",
    ("btrieve_continuous", "password", "empty"): "the default: an engine without security takes no login",
    ("btrieve_continuous", "db", "empty"): "the default: an engine without security takes no login",
    ("btrieve_continuous", "run_id", "empty"): "the default; the btrieve role passes backup_run_id | default('')",
    ("tape_set", "volume", "empty"): "the default: any labelled volume (a blank tape is refused)",
}

# AnsibleModule refuses these before the collection's check can run, but its message does not name the option: for a
# dict with sub-options given a string its first error is "dictionary requested, could not parse JSON or key=value"
# (ansible-core 2.19, parameters._validate_sub_spec; the option is named only in a later error it does not show).
DICTS_WITH_SUB_OPTIONS = (("aligned_copy", "sink"), ("backup_command", "pre_window"), ("btrieve_continuous", "pre_window"),
                          ("pg_backup_session", "pre_window"), ("bdb_checkpoint", "plan"),
                          ("backup_guard", "open_set"), ("backup_set", "disarm")) + tuple(
                              (module, "job") for module in JOB_MODULES)
UNNAMED_BY_ANSIBLE: t.Dict[t.Tuple[str, str, str], str] = {
    (module, option, "wrong_type"): "AnsibleModule's own message for a dict with sub-options"
    for module, option in DICTS_WITH_SUB_OPTIONS
}

INJECTION = "x; touch {tmp}/pwned $(touch {tmp}/pwned2) `touch {tmp}/pwned3`"
PWNED = ("pwned", "pwned2", "pwned3")
WRONG_TYPE = {"int": "abc", "float": "abc", "bool": "maybe", "list": {"not": "a list"}, "dict": "abc"}


class Case(t.NamedTuple):
    module: str
    key: str  # the option as the spec nests it: sink.device, sources.path
    shown: str  # the option as the message names it: sink.device, sources[0].path
    kind: str  # wrong_type, negative, zero, relative, empty, newline, injection
    value: t.Any
    parent: t.Optional[str]
    listed: bool  # the parent is a list of dicts (sources[0])
    secret: bool

    @property
    def id(self) -> str:
        return "%s-%s-%s" % (self.module, self.shown, self.kind)


def option_cases(module: str, key: str, shown: str, entry: t.Dict[str, t.Any], parent: t.Optional[str],
                 listed: bool) -> t.Iterator[Case]:
    kind = entry.get("type", "str")
    secret = bool(entry.get("no_log"))

    def case(name: str, value: t.Any, shown_as: str = shown) -> Case:
        return Case(module, key, shown_as, name, value, parent, listed, secret)

    if kind in WRONG_TYPE:
        yield case("wrong_type", WRONG_TYPE[kind])
    if kind in ("int", "float"):
        lowest = MINIMUM.get((module, key), 0)
        yield case("negative", -1 if lowest > -1 else lowest - 1)
        if lowest >= 1:
            yield case("zero", 0)
    if kind == "path":
        yield case("relative", "relative/dir")
        yield case("empty", "")
        yield case("newline", "/a\nb")
    if kind == "str":
        yield case("empty", "")
        yield case("newline", "a\nb")
        yield case("injection", INJECTION)
    if kind == "raw":
        yield case("injection", INJECTION)
    if kind == "list" and entry.get("elements") == "str":
        yield case("empty", [""], shown + "[0]")
        yield case("newline", ["a\nb"], shown + "[0]")
        yield case("injection", [INJECTION], shown + "[0]")


def all_cases() -> t.List[Case]:
    cases = []
    for module in MODULES:
        for option, entry in captured_spec(module).items():
            cases.extend(option_cases(module, option, option, entry, None, False))
            if entry.get("options"):
                listed = entry.get("type") == "list"
                for sub, sub_entry in entry["options"].items():
                    shown = "%s%s.%s" % (option, "[0]" if listed else "", sub)
                    cases.extend(option_cases(module, option + "." + sub, shown, sub_entry, option, listed))
    return cases


CASES = all_cases()


def with_tmp(value: t.Any, tmp: str) -> t.Any:
    if isinstance(value, str):
        return value.replace(TMP, tmp).replace("{tmp}", tmp)
    if isinstance(value, list):
        return [with_tmp(item, tmp) for item in value]
    if isinstance(value, dict):
        return {key: with_tmp(item, tmp) for key, item in value.items()}
    return value


def case_args(case: Case, tmp: str) -> t.Dict[str, t.Any]:
    args = with_tmp(BASELINE[case.module], tmp)
    value = with_tmp(case.value, tmp)
    if case.parent is None:
        args[case.key] = value
    else:
        parent = with_tmp(PARENTS[(case.module, case.parent)], tmp)
        parent[case.key.split(".", 1)[1]] = value
        args[case.parent] = [parent] if case.listed else parent
    return args


def names_the_option(case: Case, msg: str) -> bool:
    """The collection's own message starts with the option's name; AnsibleModule's names it in quotes (a sub-option
    with its parent) or says 'value of <option> must be one of'."""
    leaf = case.key.rsplit(".", 1)[-1]
    if msg.startswith(case.shown + " "):
        return True
    if case.parent is not None:
        return ("'%s'" % leaf in msg or " %s " % leaf in msg) and case.parent in msg
    return "'%s'" % case.key in msg or "value of %s must be" % case.key in msg


def test_every_module_and_every_option_is_in_the_table():
    assert {case.module for case in CASES} == set(MODULES)
    for module, key, kind in list(ALLOWED) + list(UNNAMED_BY_ANSIBLE):
        assert any(case.module == module and case.key == key and case.kind == kind for case in CASES), (module, key, kind)
    for (module, key), parent in zip(PARENTS, PARENTS.values()):
        assert captured_spec(module)[key].get("options"), (module, key)
        assert parent


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_naming_the_option_without_a_traceback(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path that is accepted lands here, never in the checkout
    tmp = str(tmp_path)
    module = importlib.import_module(PACKAGE + case.module)
    if case.kind == "injection":
        baseline = module_result(module, capsys, check_mode=True, **with_tmp(BASELINE[case.module], tmp))
    result = module_result(module, capsys, check_mode=True, **case_args(case, tmp))
    msg = str(result.get("msg", ""))
    assert "Traceback" not in msg and "Traceback" not in str(result.get("exception", "")), msg
    assert not [name for name in PWNED if os.path.exists(os.path.join(tmp, name))], "an injected command ran"
    allowed = ALLOWED.get((case.module, case.key, case.kind))
    if allowed:
        return  # accepted on purpose: the reason is in ALLOWED
    if case.kind == "injection":
        # Taken as data, never run: accepted, or refused naming the option, or failing as the valid baseline does
        # (the text quoted back as the value it is).
        injected = with_tmp(INJECTION, tmp)
        assert (not result.get("failed") or names_the_option(case, msg) or case.key.rsplit(".", 1)[-1] in msg
                or msg == baseline.get("msg") or injected in msg), "%s: %s" % (case.id, msg)
        return
    assert result.get("failed") is True, "%s: accepted without a word: %r" % (case.id, result)
    if (case.module, case.key, case.kind) in UNNAMED_BY_ANSIBLE:
        return
    assert names_the_option(case, msg), "%s: the message does not name %s: %s" % (case.id, case.shown, msg)
    if msg.startswith(case.shown + " must"):
        assert result.get("retryable") is False, "%s: bad input is not fixed by a retry" % case.id
    if case.secret:
        assert "a\nb" not in msg


@pytest.mark.parametrize("module, option", [("tape_changer", "mtx"), ("tape_status", "tapeinfo")])
def test_a_program_given_by_its_bare_name_passes_the_option_check(module, option, capsys, tmp_path, monkeypatch):
    # Declared command_ok: a bare name is looked up on PATH ("relative/dir", with a slash, is refused above).
    monkeypatch.chdir(tmp_path)
    args = with_tmp(BASELINE[module], str(tmp_path))
    args[option] = "no-such-program-here"
    result = module_result(importlib.import_module(PACKAGE + module), capsys, check_mode=True, **args)
    assert not str(result.get("msg", "")).startswith(option + " must"), result
