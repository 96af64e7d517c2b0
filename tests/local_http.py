"""A throwaway HTTP server on 127.0.0.1 for the download tests (mirrors, faults)."""

import contextlib
import threading
from http.server import ThreadingHTTPServer


@contextlib.contextmanager
def local_http_server(handler, **attributes):
    """Serve with ``handler`` on a free local port while the context lasts.

    ``attributes`` are set on the server before it starts (handlers read them
    as ``self.server.<name>``); the server's ``server_address`` gives the port.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
