package org.mooncake4j.pg;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.List;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/**
 * Host copies of one operation's device tensors, for the operations of backend {@code mooncake} that
 * have no kernel: the group copies the inputs to host memory before the operation's first attempt,
 * runs the host algorithm (with its agreement and redo) on the copies, and copies the outputs back
 * once the result is committed, so a redo always starts from the caller's input. The copies live
 * until the operation ends.
 *
 * <p>{@link #HOST} is the stage of backend {@code mooncake-cpu}: it only checks that tensors are on
 * the CPU and allocates nothing.
 */
class Stage implements AutoCloseable {
    /** Host tensors only (backend mooncake-cpu). */
    static final Stage HOST = new Stage(null, null);

    private final String backend;
    private final Device device;
    private Arena arena;
    private List<Tensor[]> in;
    private List<Tensor[]> out;

    private Stage(String backend, Device device) {
        this.backend = backend;
        this.device = device;
    }

    /** A stage for backend {@code backend} whose device tensors must live on {@code device}. */
    static Stage forDevice(String backend, Device device) { return new Stage(backend, device); }

    /**
     * The host tensor the operation works on for {@code t}: {@code t} itself on the CPU, else a host
     * copy; {@code copyIn} copies {@code t} into it before the operation, {@code copyOut} copies it
     * back after.
     */
    Tensor host(Tensor t, String what, boolean copyIn, boolean copyOut) {
        if (t == null) throw new IllegalArgumentException(what + " is null");
        if (t.device().isCpu()) return t;
        if (device == null) {
            throw new IllegalArgumentException("backend " + ProcessGroup.BACKEND_CPU + " needs CPU tensors, but " + what + " is on " + t.device()
                    + "; use backend 'mooncake' for device tensors or copy with to(Device.CPU)");
        }
        checkDevice(device, backend, t, what);
        if (arena == null) {
            arena = Arena.ofShared();
            in = new ArrayList<>(2);
            out = new ArrayList<>(2);
        }
        Tensor h = Tensor.wrap(arena.allocate(Math.max(1, t.byteSize()), 64), t.dtype(), t.shape());
        Tensor[] pair = {t, h};
        if (copyIn) in.add(pair);
        if (copyOut) out.add(pair);
        return h;
    }

    /**
     * {@link #host} for each tensor of a list (null stays null: e.g. gather's output on a non-root); a
     * list of host tensors is returned as it is.
     */
    List<Tensor> hostList(List<Tensor> list, String what, boolean copyIn, boolean copyOut) {
        if (list == null) return null;
        boolean allHost = true;
        for (int j = 0; j < list.size(); j++) {
            Tensor t = list.get(j);
            if (t != null && !t.device().isCpu()) {
                allHost = false;
                if (device == null) host(t, what + "[" + j + "]", copyIn, copyOut); // throws: this backend moves host memory only
            }
        }
        if (allHost) return list;
        List<Tensor> h = new ArrayList<>(list.size());
        for (int j = 0; j < list.size(); j++) {
            Tensor t = list.get(j);
            h.add(t == null ? null : host(t, what + "[" + j + "]", copyIn, copyOut));
        }
        return h;
    }

    /** Fails unless device tensor {@code t} is on {@code device}, the GPU of a process group of backend {@code backend}. */
    static void checkDevice(Device device, String backend, Tensor t, String what) {
        if (!t.device().equals(device)) {
            throw new IllegalArgumentException(what + " is on " + t.device() + " but this rank of the process group (backend " + backend + ") uses "
                    + device + "; move it with to(Device.cuda(" + device.index() + "))");
        }
    }

    boolean copies() { return arena != null; }

    void copyIn() {
        if (in != null) for (Tensor[] p : in) p[1].copyFrom(p[0]);
    }

    void copyOut() {
        if (out != null) for (Tensor[] p : out) p[0].copyFrom(p[1]);
    }

    @Override
    public void close() {
        if (arena != null) {
            arena.close();
            arena = null;
        }
    }
}
