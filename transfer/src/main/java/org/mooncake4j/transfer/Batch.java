package org.mooncake4j.transfer;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.transport.TransferCompletion;
import org.mooncake4j.transfer.transport.TransferHandle;

/**
 * The requests of one {@link TransferEngine#submit} call and their statuses. A status leaves PENDING
 * exactly once (compare-and-set), whichever comes first: the transfer's outcome, a timeout at
 * {@link #await}, or the engine closing. Thread-safe: workers, reader threads and the awaiting
 * caller all touch it.
 */
final class Batch {
    private static final TransferStatus PENDING = new TransferStatus(TransferStatus.State.PENDING, 0, "");

    final long id;
    private final List<TransferRequest> requests;
    private final AtomicReferenceArray<TransferStatus> statuses;
    private final AtomicReferenceArray<TransferHandle> handles;
    private int remaining;

    Batch(long id, List<TransferRequest> requests) {
        this.id = id;
        this.requests = requests;
        this.statuses = new AtomicReferenceArray<>(requests.size());
        this.handles = new AtomicReferenceArray<>(requests.size());
        for (int i = 0; i < requests.size(); i++) statuses.set(i, PENDING);
        this.remaining = requests.size();
    }

    int size() { return requests.size(); }

    TransferRequest request(int i) { return requests.get(i); }

    TransferStatus status(int i) { return statuses.get(i); }

    /** Sets the outcome of request {@code i} unless it already has one; returns whether it did. */
    boolean finish(int i, TransferStatus s) {
        if (!statuses.compareAndSet(i, PENDING, s)) return false;
        synchronized (this) {
            if (--remaining == 0) notifyAll();
        }
        return true;
    }

    void fail(int i, String message) { finish(i, new TransferStatus(TransferStatus.State.FAILED, 0, message)); }

    /** The completion that records request {@code i}'s outcome. */
    TransferCompletion completion(int i) {
        return new TransferCompletion() {
            @Override public void completed(long bytes) { finish(i, new TransferStatus(TransferStatus.State.COMPLETED, bytes, "")); }

            @Override public void failed(String message) { fail(i, message); }
        };
    }

    /** Remembers the in-flight transfer of request {@code i} so that a timeout can abandon it. */
    void attach(int i, TransferHandle h) {
        handles.set(i, h);
        if (statuses.get(i).state() == TransferStatus.State.TIMEOUT) h.abandon();
    }

    /** Waits for every request until the deadline; those still pending then become TIMEOUT and are abandoned. */
    List<TransferStatus> await(Deadline deadline) {
        synchronized (this) {
            while (remaining > 0 && !deadline.expired()) {
                try {
                    wait(Math.min(deadline.remainingMillis(), 1000));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
        }
        List<TransferStatus> out = new ArrayList<>(requests.size());
        for (int i = 0; i < requests.size(); i++) {
            if (statuses.get(i) == PENDING) {
                finish(i, new TransferStatus(TransferStatus.State.TIMEOUT, 0, timeoutMessage(requests.get(i))));
                TransferHandle h = handles.get(i);
                if (h != null) h.abandon();
            }
            out.add(statuses.get(i));
        }
        return out;
    }

    private static String timeoutMessage(TransferRequest r) {
        RemoteSegment t = r.target();
        return "Transfer " + r.opcode() + " of [" + r.targetOffset() + ", " + (r.targetOffset() + r.length()) + ") "
                + (r.opcode() == TransferRequest.Opcode.WRITE ? "to" : "from") + " segment " + t.name() + " (engine " + t.engineName()
                + ", " + t.transport() + ") did not finish by the deadline: the peer is slow, stopped or unreachable.";
    }
}
