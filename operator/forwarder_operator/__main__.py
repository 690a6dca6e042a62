"""``python -m forwarder_operator``: the same as ``forwarder operator``."""

import sys

from forwarder_operator.main import run

sys.exit(run(sys.argv[1:]))
