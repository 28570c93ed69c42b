# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """PostgreSQL connection options, named as community.postgresql names them (login_host, login_port, ...).

    The argument spec that matches is plugins/module_utils/_pg_sql.py's ``connection_argument_spec()``.
    """

    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host name or address of the server, or a Unix socket directory. Not set means libpq's default (C(PGHOST), a
        service file, the local socket).
    type: str
    aliases: [host]
  login_port:
    description: Server port, at least 1. Not set means libpq's default (C(PGPORT), 5432).
    type: int
    aliases: [port]
  login_user:
    description: Role to connect as. Not set means libpq's default (C(PGUSER), the OS user).
    type: str
  login_password:
    description: Password. Not set means libpq's default (C(PGPASSWORD), C(~/.pgpass)).
    type: str
  login_db:
    description: Database to connect to. Not set means libpq's default (C(PGDATABASE)).
    type: str
    aliases: [db]
  login_unix_socket:
    description: Unix socket directory; used as the host unless O(login_host) names a host other than C(localhost).
    type: str
  connect_params:
    description:
      - Further libpq connection parameters, for example C(sslmode), C(service), C(connect_timeout). The named options
        above take precedence.
    type: dict
    default: {}
notes:
  - Connection options that are not set fall back to libpq's environment variables (C(PGHOST), C(PGPORT), ...) and
    defaults, as C(psql) does.
'''
