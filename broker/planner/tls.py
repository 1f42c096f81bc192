"""The TLS settings every model SDK client shares.

A client is made per request (see `chat.SdkBackend`), and an SDK left to itself makes its own
TLS settings each time: loading the CA bundle costs 40-150 ms of CPU, taken from the broker's
thread at every step of every model-driven process, while all the others wait. So they are
made once per broker process, with the SDKs' own defaults (their `httpx2`
`create_ssl_context`: the system's CA bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), and never
changed after. `SdkBackend` asks for them in a worker thread.
"""

from __future__ import annotations

import ssl
import threading

_made = threading.Lock()
_context: ssl.SSLContext | None = None


def shared_tls() -> ssl.SSLContext:
    """The settings, made the first time they are asked for."""
    global _context
    with _made:
        if _context is None:
            import httpx2  # what both SDKs of the `llm` extra make their clients with

            _context = httpx2.create_ssl_context()
        return _context
