"""Network off for every Python process the reliability tests start (the CLI, Papermill, the kernels, Jupyter).

This folder is put first on ``PYTHONPATH`` with ``REPLICATE_TEST_OFFLINE=1``; Python imports this module at start-up
and from then on any connection to an address that is not loopback, and any name lookup other than localhost, is
refused with ``ConnectionRefusedError`` / ``socket.gaierror``. Loopback stays open: Jupyter kernels talk to their
client over 127.0.0.1. ``tests/reliability/conftest.py`` applies the same guard inside the pytest process.
"""

import os

if os.environ.get("REPLICATE_TEST_OFFLINE") == "1":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from offline_guard import install  # tests/reliability/offline_guard.py

    install()
