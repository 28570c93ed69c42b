# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one masking helper: every occurrence of every secret, in strings and nested structures."""

from __future__ import annotations

from ansible_collections.consistent.backup.plugins.module_utils import _secrets as s


def test_every_occurrence_of_every_secret_is_masked():
    assert s.mask("butil -startbu @x -UIDadmin -PWDs3cret; again s3cret", ["s3cret"]) == (
        "butil -startbu @x -UIDadmin -PWD********; again ********")


def test_a_longer_secret_is_masked_whole_before_a_shorter_one_inside_it():
    assert s.mask("-PWDs3cret-and-more", ["s3cret", "s3cret-and-more"]) == "-PWD********"


def test_empty_secrets_mask_nothing_and_non_strings_pass_unchanged():
    assert s.mask("nothing to hide", ["", None]) == "nothing to hide"
    assert s.mask(17, ["17"]) == 17


def test_bytes_are_decoded_and_masked():
    assert s.mask(b"login failed for -PWDs3cret", ["s3cret"]) == "login failed for -PWD********"


def test_a_nested_structure_is_masked_in_values_and_keys_and_the_original_is_left_alone():
    data = {"msg": "rc 2: -PWDs3cret", "attempts": [{"stderr": "s3cret"}, ("s3cret", 3)], "s3cret": True, "rc": 2}
    masked = s.mask_data(data, ["s3cret"])
    assert masked == {"msg": "rc 2: -PWD********", "attempts": [{"stderr": "********"}, ["********", 3]], "********": True,
                      "rc": 2}
    assert data["msg"] == "rc 2: -PWDs3cret"


class Module:
    no_log_values = {"s3cret", ""}


def test_a_module_s_secrets_are_its_no_log_values():
    assert s.module_secrets(Module()) == ["s3cret"]
    assert s.module_secrets(object()) == []
