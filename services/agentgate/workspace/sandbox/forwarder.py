"""The in-sandbox relay from 127.0.0.1:PORT to the proxy's unix socket, then the command.

Run inside the sandbox as `python -I -S forwarder.py PORT SOCKET -- ARGV...` (stdlib only,
no site: it starts in a few milliseconds). It listens first, so the command never races a
forwarder that is not ready, then forks: the child relays connections (one thread per
direction), the parent becomes the command with `exec`, keeping its pid, stdio and exit
status. The relay ends with the sandbox (its PID namespace dies with the command).
"""

import os
import socket
import sys
import threading


def _pump(source, target):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay(client, socket_path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError:
        client.close()
        upstream.close()
        return
    threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
    _pump(upstream, client)


def main(argv):
    port, socket_path, separator, command = int(argv[1]), argv[2], argv[3], argv[4:]
    if separator != "--" or not command:
        sys.stderr.write("usage: forwarder.py PORT SOCKET -- ARGV...\n")
        return 2
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    if os.fork() == 0:
        # The relay: no stdio of the command's, so it never holds the output pipes open.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()
    listener.close()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"{command[0]}: {error.strerror}\n")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
