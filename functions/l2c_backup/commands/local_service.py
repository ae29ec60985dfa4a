"""What the local stand-ins' commands (oss-server, fc-server) share: serve until stopped."""
import signal
import threading


def serve_until_stopped(server):
    """Blocks until Ctrl-C or SIGTERM, then stops `server` (anything with .stop())."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
