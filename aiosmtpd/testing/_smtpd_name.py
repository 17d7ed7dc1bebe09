"""The plain test server under the fixture name ``smtpd``.

aiosmtpd.testing.plugin registers this module as a plugin only when smtpdfix's
plugin, whose fixture has the same name, is not active: so ``smtpd`` is the
same fixture whatever order the two plugins load in.  Ours is always
``aiosmtpd_server`` as well.
"""

from __future__ import annotations

import pytest

from aiosmtpd.testing.plugin import _plain_server

smtpd = pytest.fixture(name="smtpd")(_plain_server)
