// A repair for Google's Pub/Sub emulator (cloud-pubsub-emulator 0.8.x), put ahead of its jar
// on the class path by tests/src/emulators.rs.
//
// The emulator's jar bundles a grpc-core that calls
// InternalStatus.asRuntimeException(Status, Metadata, boolean) and a grpc-api that lacks it.
// grpc-core calls it when a call ends without the client half-closing it: the client cancels
// the stream (RST_STREAM) or its connection closes, as when a consumer process exits. The
// NoSuchMethodError that follows ("Exception in onRstStreamRead()" in the emulator's log)
// leaves the call open, so the emulator's StreamingPull keeps pulling the subscription's
// messages for a consumer that has gone and writes them nowhere; each waits out its ack
// deadline and may go to a gone consumer again. Real Pub/Sub ends such a stream.
//
// This is the bundled grpc-api's InternalStatus with the missing method added, as grpc-api
// defines it: an exception with or without a stack trace.
package io.grpc;

public final class InternalStatus {
  private InternalStatus() {}

  public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
  public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

  public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(
      Status status, Metadata trailers) {
    return new InternalStatusRuntimeException(status, trailers);
  }

  public static StatusRuntimeException asRuntimeException(
      Status status, Metadata trailers, boolean withStackTrace) {
    return withStackTrace
        ? new StatusRuntimeException(status, trailers)
        : new InternalStatusRuntimeException(status, trailers);
  }
}
