# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the backup_manifest writer: PostgreSQL's layout (backup_manifest.c), its checksum rule
(parse_manifest.c: SHA-256 of everything before the last line), path escaping and the copy's entries."""

from __future__ import annotations

import calendar
import hashlib
import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.module_utils._pg_manifest import (
    ManifestFile,
    build_manifest,
    copy_entries,
    file_entry,
    format_last_modified,
    manifest_version,
    path_field,
    verify_checksum,
)

SHA_A = hashlib.sha256(b"a").hexdigest()
MAY_1 = calendar.timegm((2024, 5, 1, 10, 0, 0))


@pytest.mark.parametrize("version_num, expected", [(130000, 1), (150004, 1), (160010, 1), (170000, 2), (180006, 2)])
def test_manifest_version_is_1_until_16_and_2_from_17(version_num, expected):
    assert manifest_version(version_num) == expected


def test_manifest_version_refuses_servers_before_13_which_have_no_manifest():
    with pytest.raises(ValueError, match="appeared in 13"):
        manifest_version(120018)


def test_version_1_layout_is_byte_for_byte_what_postgresql_writes():
    manifest = build_manifest([ManifestFile("PG_VERSION", 3, MAY_1, SHA_A)], 150000, None, 1, 0x2000028, 0x2000100)

    body = ('{ "PostgreSQL-Backup-Manifest-Version": 1,\n'
            '"Files": [\n'
            '{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2024-05-01 10:00:00 GMT", '
            '"Checksum-Algorithm": "SHA256", "Checksum": "%s" }\n'
            '],\n'
            '"WAL-Ranges": [\n'
            '{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }\n'
            '],\n' % SHA_A).encode()
    assert manifest == body + b'"Manifest-Checksum": "' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'


def test_version_2_carries_the_system_identifier_after_the_version():
    manifest = build_manifest([], 180000, 7310000000000000001, 1, 0x2000028, 0x2000100)

    assert manifest.startswith(b'{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": 7310000000000000001,\n"Files": [\n],\n')


def test_version_2_writes_a_negative_bigint_identifier_as_the_unsigned_value():
    manifest = build_manifest([], 170000, -1, 1, 0, 1)

    assert b'"System-Identifier": 18446744073709551615,\n' in manifest


def test_version_2_without_system_identifier_is_refused():
    with pytest.raises(ValueError, match="system identifier"):
        build_manifest([], 170000, None, 1, 0, 1)


def test_files_are_separated_by_comma_newline_with_none_after_the_last():
    files = [ManifestFile("b", 1, MAY_1, SHA_A), ManifestFile("a", 1, MAY_1, SHA_A)]

    text = build_manifest(files, 150000, None, 1, 0, 1).decode()

    lines = text.split("\n")
    assert lines[2].startswith('{ "Path": "a",') and lines[2].endswith(" },")
    assert lines[3].startswith('{ "Path": "b",') and lines[3].endswith(" }")
    assert lines[4] == "],"


def test_manifest_checksum_covers_everything_before_the_last_line():
    manifest = build_manifest([ManifestFile("base/1/1259", 8192, MAY_1, SHA_A)], 180000, 42, 3, 0x100000028, 0x1FF000000)
    last_line_start = manifest.rindex(b"\n", 0, len(manifest) - 1) + 1

    assert manifest[last_line_start:].startswith(b'"Manifest-Checksum": "')
    assert manifest[last_line_start + 22:last_line_start + 86].decode() == hashlib.sha256(manifest[:last_line_start]).hexdigest()
    assert verify_checksum(manifest)


def test_a_changed_byte_breaks_the_manifest_checksum():
    manifest = build_manifest([ManifestFile("PG_VERSION", 3, MAY_1, SHA_A)], 150000, None, 1, 0, 1)

    assert not verify_checksum(manifest.replace(b'"Size": 3', b'"Size": 4'))


def test_the_manifest_is_valid_json_with_the_lsns_printed_as_postgresql_does():
    manifest = json.loads(build_manifest([], 150000, None, 2, 0x1600000000 + 0xB374D848, 0x16B374D900, ).decode())

    assert manifest["WAL-Ranges"] == [{"Timeline": 2, "Start-LSN": "16/B374D848", "End-LSN": "16/B374D900"}]


@pytest.mark.parametrize("path, expected", [
    ("base/1/1259", '"Path": "base/1/1259"'),
    ('odd"name', '"Path": "odd\\"name"'),
    ("back\\slash", '"Path": "back\\\\slash"'),
    ("tab\there", '"Path": "tab\\there"'),
    ("new\nline", '"Path": "new\\nline"'),
    ("bell\x07", '"Path": "bell\\u0007"'),
    ("caf\u00e9", '"Path": "caf\u00e9"'),
])
def test_utf8_paths_are_json_escaped_like_postgresql_escape_json(path, expected):
    assert path_field(path) == expected


def test_a_path_that_is_not_utf8_is_written_as_encoded_path_hex():
    path = os.fsdecode(b"base/caf\xe9")

    assert path_field(path) == '"Encoded-Path": "%s"' % b"base/caf\xe9".hex()


def test_last_modified_is_gmt_with_second_precision():
    assert format_last_modified(MAY_1 + 0.9) == "2024-05-01 10:00:00 GMT"


def test_copy_entries_take_the_regular_files_under_the_data_prefix_relative_to_the_data_directory(tmp_path):
    manifest = {"files": [
        {"path": "pgdata/PG_VERSION", "type": "file", "size": 3, "sha256": SHA_A, "mtime": MAY_1},
        {"path": "pgdata/base", "type": "dir"},
        {"path": "pgdata/global/pg_control", "type": "file", "size": 8192, "sha256": SHA_A, "mtime": "2024-05-01T10:00:00Z"},
        {"path": "pgdata/backup_label", "type": "file", "size": 10, "sha256": SHA_A, "mtime": MAY_1},
        {"path": "other/PG_VERSION", "type": "file", "size": 3, "sha256": SHA_A, "mtime": MAY_1},
    ]}

    entries = copy_entries(manifest, str(tmp_path), "pgdata")

    assert entries == [ManifestFile("PG_VERSION", 3, MAY_1, SHA_A), ManifestFile("global/pg_control", 8192, MAY_1, SHA_A)]


def test_copy_entries_refuse_a_file_without_checksum(tmp_path):
    manifest = {"files": [{"path": "pgdata/PG_VERSION", "type": "file", "size": 3}]}

    with pytest.raises(ValueError, match="without size or sha256"):
        copy_entries(manifest, str(tmp_path), "pgdata")


def test_file_entry_measures_a_written_label(tmp_path):
    (tmp_path / "backup_label").write_bytes(b"START WAL LOCATION: 0/2000028\n")

    entry = file_entry(str(tmp_path), "backup_label")

    assert entry.path == "backup_label" and entry.size == 30
    assert entry.sha256 == hashlib.sha256(b"START WAL LOCATION: 0/2000028\n").hexdigest()
