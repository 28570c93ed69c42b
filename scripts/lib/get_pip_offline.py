# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the pip bootstrap script ansible-test downloads from ci-files.testing.ansible.com.

That host is out of reach here (only PyPI is), so scripts/sanity.sh places this file where ansible-test
caches its bootstrap script. Like get-pip.py it installs pip into the running interpreter and then runs
``pip install`` with the arguments it was given: pip comes from the standard library's ensurepip, the
requested versions from PyPI.
"""

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
arguments = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + arguments))
