"""Running the app: blocking (`lmforge serve`) or in a background thread (tests, the demo)."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from lmforge.errors import ArgumentError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or an error naming the flag to change."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ArgumentError('port', f'cannot listen on {host}:{port}: {e.strerror or e}; choose another --port '
                                    '(or --host)') from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f'[{host}]' if ':' in host else host
    return f'http://{shown}:{port}'


def make_server(app, log_level: str = 'warning'):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan='on')
    return uvicorn.Server(config)


@dataclass
class ServerHandle:
    """A server running in a background thread: ``.url`` is the OpenAI base URL (…/v1); ``.stop()`` ends it."""
    url: str
    host: str
    port: int
    server: object
    thread: threading.Thread

    @property
    def base_url(self) -> str:  # without /v1: for /health
        return self.url[:-len('/v1')]

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server(app, host: str = '127.0.0.1', port: int = 0, log_level: str = 'warning',
                 timeout: float = 30.0) -> ServerHandle:
    """Serve ``app`` with uvicorn in a daemon thread; returns once it accepts connections."""
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    server = make_server(app, log_level)
    errors = []

    def run():
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # SystemExit from uvicorn's startup failures included
            errors.append(e)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f'lmforge-server-{port}', daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f'the server on {host}:{port} did not start'
                               + (f': {errors[0]!r}' if errors else ''))
        time.sleep(0.01)
    return ServerHandle(url=url_of(host, port) + '/v1', host=host, port=port, server=server, thread=thread)
