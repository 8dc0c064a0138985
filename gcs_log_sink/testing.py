"""A local GCS-compatible server for your own tests, demos and examples (the ``local`` extra).

``LocalGCS`` runs gcp-storage-emulator on 127.0.0.1, patched where it departs from GCS in
ways that would hide resumable-upload bugs (see :mod:`gcs_log_sink._localgcs`)::

    from gcs_log_sink.testing import LocalGCS

    with LocalGCS() as gcs:                      # pip install 'gcs-log-sink[local]'
        client = gcs.client()                    # or STORAGE_EMULATOR_HOST=gcs.url
        client.create_bucket("logs")
        ...

This module is the public name; ``gcs_log_sink._localgcs`` is where the code lives.
"""

from __future__ import annotations

from ._localgcs import LocalGCS, anonymous_client, emulator_env, free_port

__all__ = ["LocalGCS", "anonymous_client", "emulator_env", "free_port"]
