"""``celery -A forwarder_worker.app worker|beat|flower``: the entry point Celery imports.

Importing this module builds the process's :class:`~forwarder_worker.core.Core` from the
environment (``FORWARDER_*``) and exposes its Celery app as ``app``, where Celery looks for
it. Nothing else imports this module: code that needs a Core builds one with
:meth:`Core.from_settings <forwarder_worker.core.Core.from_settings>`.
"""

from __future__ import annotations

from forwarder_worker.core import Core
from forwarder_worker.settings import get_settings

core = Core.from_settings(get_settings())
app = core.app
