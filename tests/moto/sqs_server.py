"""moto's server, with SQS receives made atomic as they are in SQS.

moto picks the visible messages of a queue and marks them received without a lock, and its
server runs every request on a thread of its own. Two ReceiveMessage calls that overlap can
therefore both be handed the same message (both see ApproximateReceiveCount 2 for a first
receive). SQS does not do this within a visibility timeout, and Ferry's tests count every
duplicate, so this launcher serialises the pick-and-mark step. The lock is released while a
long poll waits for messages, so long polls still overlap.

It also gives moto's SQS model a cheap clock. moto reads the time through datetime
arithmetic (about 15 µs a call) for every message each time it counts a queue, and
SendMessage counts the whole queue (to read one attribute), so publishing n messages cost
O(n²) slow clock reads: 400 messages took 5 to 20 s. The replacement returns the same value,
the wall clock in milliseconds.

Usage: python tests/moto/sqs_server.py -H 127.0.0.1 -p PORT (moto_server's own flags).
"""

import sys
import threading
import time

from moto.server import main
from moto.sqs import models

_receive_lock = threading.RLock()
_receive_message = models.SQSBackend.receive_message
_wait_for_messages = models.Queue.wait_for_messages
_holder = threading.local()


def receive_message(self, *args, **kwargs):
    with _receive_lock:
        _holder.inside = True
        try:
            return _receive_message(self, *args, **kwargs)
        finally:
            _holder.inside = False


def wait_for_messages(self, timeout):
    if not getattr(_holder, "inside", False):
        return _wait_for_messages(self, timeout)
    # A long poll waiting for messages: let other receives in meanwhile.
    _receive_lock.release()
    try:
        return _wait_for_messages(self, timeout)
    finally:
        _receive_lock.acquire()


_unix_time_millis = models.unix_time_millis


def unix_time_millis(dt=None):
    if dt is None:
        return time.time() * 1000.0
    return _unix_time_millis(dt)


models.unix_time_millis = unix_time_millis
models.SQSBackend.receive_message = receive_message
models.Queue.wait_for_messages = wait_for_messages

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
