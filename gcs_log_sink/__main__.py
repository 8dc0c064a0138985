"""``python -m gcs_log_sink`` is the ``gcs-log-sink`` command."""

import sys

from .cli import main

sys.exit(main())
