"""moto's server, with SQS receives made atomic as they are in SQS.

moto picks the visible messages of a queue and marks them received without a lock, and its
server runs every request on a thread of its own. Two ReceiveMessage calls that overlap can
therefore both be handed the same message (both see ApproximateReceiveCount 2 for a first
receive). SQS does not do this within a visibility timeout, and Ferry's tests count every
duplicate, so this launcher serialises the pick-and-mark step. The lock is released while a
long poll waits for messages, so long polls still overlap.

Deletes are serialised too. moto deletes a message by building a new message list without it
and assigning that list, with no lock: two DeleteMessage(Batch) calls that overlap each build
theirs from the same list, and the one assigned last brings the other's message back; a
SendMessage that appends meanwhile is lost the same way. The message then returned when its
visibility timeout ended, a duplicate delivery that SQS does not make (seen as one message in
400 delivered twice, 60 s apart, in the autoscaler's live test about one run in six).

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


_delete_message = models.Queue.delete_message


def delete_message(self, receipt_handle):
    # The receive lock keeps a receive's pick-and-mark (and its removal of dead-lettered
    # messages) out; the queue's own lock, which SendMessage's append takes, keeps sends out.
    with _receive_lock, self._messages_lock:
        return _delete_message(self, receipt_handle)


_unix_time_millis = models.unix_time_millis


def unix_time_millis(dt=None):
    if dt is None:
        return time.time() * 1000.0
    return _unix_time_millis(dt)


models.unix_time_millis = unix_time_millis
models.SQSBackend.receive_message = receive_message
models.Queue.wait_for_messages = wait_for_messages
models.Queue.delete_message = delete_message

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
