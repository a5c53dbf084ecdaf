package org.mooncake4j.transfer;

import java.io.IOException;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.CpuAffinity;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.StoreException;
import org.mooncake4j.transfer.transport.AsyncRemoteSegment;
import org.mooncake4j.transfer.transport.LocalSegmentTable;
import org.mooncake4j.transfer.transport.SegmentRanges;
import org.mooncake4j.transfer.transport.TransferHandle;
import org.mooncake4j.transfer.transport.shm.ShmFiles;
import org.mooncake4j.transfer.transport.shm.ShmLocalSegment;
import org.mooncake4j.transfer.transport.shm.ShmRemoteSegment;
import org.mooncake4j.transfer.transport.tcp.EngineIdentity;
import org.mooncake4j.transfer.transport.tcp.TcpPeerLink;
import org.mooncake4j.transfer.transport.tcp.TcpRemoteSegment;
import org.mooncake4j.transfer.transport.tcp.TcpServer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The transfer engine: registers this process's memory as named segments, publishes them in a
 * {@link MetadataStore}, and opens peers' segments for one-sided writes, reads and publishes over
 * shm (same host: the peer's pages are mapped, a write is one memcpy) or tcp (frames that the peer's
 * engine writes straight into the segment).
 *
 * <p>Every engine runs a TCP server. Opening a peer's segment always connects to the peer's engine,
 * even when shm carries the data, because that connection is how the peer's death is noticed at once:
 * a killed process's sockets close, the link sees EOF, {@link RemoteSegment#alive()} turns false and
 * the {@link PeerFailureListener}s are told. The server side reports an incoming connection that
 * closes the same way, so a peer that only writes to this engine is watched too. A failed peer
 * instance stays failed; a replacement process registers the segment again and
 * {@link #openSegment} picks it up.
 *
 * <p>Segment files live in /dev/shm (or java.io.tmpdir when /dev/shm is absent or too small) and are
 * deleted when the segment or the engine is closed, and by a shutdown hook when the JVM exits
 * normally. A process killed with SIGKILL leaves its files behind; the first {@link #registerSegment}
 * of an engine started later in the same pid namespace removes the files whose process is gone.
 *
 * <p>Threading: thread-safe. Threads: one acceptor, one reader per incoming and per outgoing
 * connection, and a small pool for batches (idle workers exit); {@link #close()} stops and joins
 * them all. Listeners run on those I/O threads.
 *
 * <p>Security: with a group token ({@link Builder#token}, default env {@code MOONCAKE_TOKEN}) every
 * TCP connection is authenticated both ways by challenge-response before a frame is applied or sent;
 * see {@link GroupToken}. Data is not encrypted.
 */
public final class TransferEngine implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(TransferEngine.class);

    /** Store key prefix of segment descriptors: {@code mooncake4j/segments/<name>}. */
    public static final String SEGMENT_KEY_PREFIX = "mooncake4j/segments/";

    private static final Set<TransferEngine> OPEN = ConcurrentHashMap.newKeySet();
    private static final AtomicBoolean HOOK_INSTALLED = new AtomicBoolean();
    private static final long PROBE_MILLIS = 1000;

    private final MetadataStore store;
    private final EngineIdentity self;
    private final String hostIp;
    private final InetAddress hostAddress;
    private final TransportChoice transport;
    private final String transportSource;
    private final Duration operationTimeout;
    private final GroupToken token;
    private final String hostId = HostNetwork.hostId();
    private final long pid = ProcessHandle.current().pid();
    private final LocalSegmentTable table = new LocalSegmentTable();
    private final TcpServer server;
    private final ConcurrentHashMap<String, ShmLocalSegment> locals = new ConcurrentHashMap<>();
    private final ConcurrentHashMap<String, Opened> remotes = new ConcurrentHashMap<>();
    private final ConcurrentHashMap<String, Object> openLocks = new ConcurrentHashMap<>();
    private final ConcurrentHashMap<String, TcpPeerLink> links = new ConcurrentHashMap<>();
    private final ConcurrentHashMap<String, Object> linkLocks = new ConcurrentHashMap<>();
    private final Set<String> failedInstances = ConcurrentHashMap.newKeySet();
    private final CopyOnWriteArrayList<PeerFailureListener> listeners = new CopyOnWriteArrayList<>();
    private final ConcurrentHashMap<Long, Batch> batches = new ConcurrentHashMap<>();
    private final AtomicLong batchIds = new AtomicLong();
    private final ThreadPoolExecutor workers;
    private final Object registerLock = new Object();
    private final AtomicBoolean staleFilesRemoved = new AtomicBoolean();
    private volatile boolean closed;

    /** A remote segment with the descriptor it was opened from, its peer's link, and the shm mapping to release (or null). */
    private record Opened(RemoteSegment segment, SegmentDescriptor descriptor, TcpPeerLink link, ShmRemoteSegment mapping) {
        void release() {
            if (mapping != null) mapping.close();
        }
    }

    /** How a segment would be reached, and why. */
    private record Route(boolean shm, String why) {}

    private TransferEngine(Builder b) {
        this.store = Objects.requireNonNull(b.store, "store: a metadata store is required (e.g. new InMemoryStore() or MetadataStores.open(uri, timeout))");
        String name = b.name != null ? b.name : defaultName();
        if (name.isBlank() || name.indexOf('\n') >= 0) throw new IllegalArgumentException("engine name must be non-blank and on one line: '" + name + "'");
        this.self = new EngineIdentity(name, UUID.randomUUID().toString());
        String ip = b.hostIp != null ? b.hostIp : System.getenv(HostNetwork.HOST_IP_ENV);
        this.hostIp = ip == null || ip.isBlank() ? HostNetwork.defaultHostIp(b.deviceFilter) : ip.trim();
        this.hostAddress = resolveHostIp(hostIp, name);
        if (b.transport != null) {
            this.transport = b.transport;
            this.transportSource = "TransferEngine.builder().transport(" + b.transport + ")";
        } else {
            this.transport = TransportChoice.fromEnvironment();
            this.transportSource = TransportChoice.ENV + "=" + System.getenv(TransportChoice.ENV);
        }
        this.operationTimeout = b.operationTimeout;
        this.token = GroupToken.resolve(b.tokenSet, b.token);
        if (b.port < 0 || b.port > 65535) throw new IllegalArgumentException("port must be 0..65535, got " + b.port);
        this.server = TcpServer.start(self, hostAddress, b.port, table, this::peerGone, operationTimeout, token);
        int threads = Math.max(2, Math.min(8, CpuAffinity.processCpus()));
        this.workers = new ThreadPoolExecutor(threads, threads, 2, TimeUnit.SECONDS, new LinkedBlockingQueue<>(),
                Thread.ofPlatform().daemon().name("mooncake4j-" + name + "-batch-", 0).factory());
        workers.allowCoreThreadTimeOut(true);
        OPEN.add(this);
        installShutdownHook();
        log.info("Transfer engine {} started on {}:{} (interface {}, transport {}, instance {}, {})", name, hostIp, server.port(),
                HostNetwork.interfaceOf(hostAddress), transport, self.instanceId(),
                token == null ? "no group token: connections are not authenticated" : "connections authenticated with the group token");
    }

    private static String defaultName() {
        String h = HostNetwork.hostId();
        return h.substring(0, h.indexOf('/')) + "-" + ProcessHandle.current().pid();
    }

    private static InetAddress resolveHostIp(String ip, String engine) {
        try {
            InetAddress a = InetAddress.getByName(ip);
            if (a.isAnyLocalAddress()) {
                throw new TransferException("Transfer engine " + engine + ": host IP " + ip + " is the wildcard address, which peers cannot connect to."
                        + " Set a concrete address of this machine with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
            }
            return a;
        } catch (IOException e) {
            throw new TransferException("Transfer engine " + engine + ": host IP '" + ip + "' cannot be resolved (" + e.getMessage()
                    + "). Set an address of this machine with Mooncake.setHostIp/MOONCAKE_HOST_IP.", e);
        }
    }

    /** One hook for the JVM: engines still open at a normal exit are closed, so their segment files go away. */
    private static void installShutdownHook() {
        if (!HOOK_INSTALLED.compareAndSet(false, true)) return;
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            for (TransferEngine e : OPEN) {
                try {
                    e.close();
                } catch (RuntimeException ex) {
                    log.warn("Closing transfer engine {} at exit failed: {}", e.name(), ex.toString());
                }
            }
        }, "mooncake4j-transfer-shutdown"));
    }

    public static Builder builder() { return new Builder(); }

    /** This engine's name (what descriptors and peer failure reports carry). */
    public String name() { return self.name(); }

    /** The address this engine advertises and listens on. */
    public String hostIp() { return hostIp; }

    /** The port this engine listens on (the one chosen when the builder asked for 0). */
    public int port() { return server.port(); }

    public TransportChoice transport() { return transport; }

    public MetadataStore store() { return store; }

    /** Whether connections are authenticated with a group token. */
    public boolean authenticated() { return token != null; }

    /**
     * Whether this engine authenticates with exactly {@code secret} (null: whether it has no token);
     * constant-time. Lets a caller that shares an engine check it belongs to the caller's group.
     */
    public boolean usesToken(String secret) { return secret == null ? token == null : token != null && token.matches(secret); }

    // ------------------------------------------------------------------ local segments

    /**
     * Registers {@code bytes} of zeroed, 64-byte-aligned shared memory as segment {@code name} and
     * publishes its descriptor. Names are unique in the store: a name held by a live engine is an
     * error; a descriptor left by a dead one is replaced.
     */
    public LocalSegment registerSegment(String name, long bytes) {
        ensureOpen();
        Objects.requireNonNull(name, "name");
        if (name.isBlank()) throw new IllegalArgumentException("segment name must not be blank");
        if (bytes <= 0) throw new TransferException("Cannot register segment " + name + ": its size must be positive, got " + bytes + " bytes.");
        synchronized (registerLock) {
            if (locals.containsKey(name)) {
                throw new TransferException("Segment " + name + " is already registered by this engine (" + self.name()
                        + "): close it first, or choose another name.");
            }
            String key = SEGMENT_KEY_PREFIX + name;
            byte[] existing = store.get(key).orElse(null);
            if (existing != null) checkReplaceable(name, existing);
            if (staleFilesRemoved.compareAndSet(false, true)) removeStaleFiles();
            Path dir = ShmFiles.chooseDirectory(name, bytes);
            Registration reg = new Registration(name, key);
            ShmLocalSegment seg = ShmFiles.create(dir, self.name(), name, bytes, reg);
            try {
                reg.segment = seg;
                reg.id = table.add(seg);
                byte[] d = new SegmentDescriptor(self.name(), self.instanceId(), hostIp, server.port(), hostId, seg.file().toString(), bytes,
                        pid, reg.id).encode();
                if (!store.compareAndSet(key, existing, d)) {
                    throw new TransferException("Segment " + name + " was registered by another engine at the same time: segment names must be"
                            + " unique in the metadata store " + store.uri() + ". Choose another name.");
                }
                reg.descriptor = d;
                locals.put(name, seg);
            } catch (RuntimeException e) {
                seg.close();
                throw e;
            }
            log.info("Engine {}: registered segment {} ({} bytes) at {}", self.name(), name, bytes, seg.file());
            return seg;
        }
    }

    /** Removes the segment files that killed processes left in /dev/shm and java.io.tmpdir (see {@link ShmFiles#removeStale}). */
    private void removeStaleFiles() {
        ShmFiles.removeStale(Path.of("/dev/shm"), self.name());
        ShmFiles.removeStale(Path.of(System.getProperty("java.io.tmpdir")), self.name());
    }

    /** Throws when the existing descriptor of {@code name} belongs to an engine that still runs. */
    private void checkReplaceable(String name, byte[] existing) {
        SegmentDescriptor old;
        try {
            old = SegmentDescriptor.decode(name, existing, store.uri());
        } catch (TransferException e) {
            log.warn("Engine {}: replacing the malformed descriptor of segment {}: {}", self.name(), name, e.getMessage());
            return;
        }
        boolean gone = old.hostId().equals(hostId) && !ProcessHandle.of(old.pid()).map(ProcessHandle::isAlive).orElse(false);
        if (!gone) {
            gone = TcpPeerLink.probe(self, old.host(), old.port(), Deadline.afterMillis(PROBE_MILLIS), token)
                    .map(id -> !id.instanceId().equals(old.instanceId())).orElse(true);
        }
        if (!gone) {
            throw new TransferException("Segment " + name + " is already registered by engine " + old.engine() + " (pid " + old.pid() + " at "
                    + old.address() + "), which is running: segment names must be unique in the metadata store " + store.uri()
                    + ". Choose another name, or close that segment first.");
        }
        log.info("Engine {}: replacing the stale descriptor of segment {} left by engine {} (pid {} at {}), which is gone",
                self.name(), name, old.engine(), old.pid(), old.address());
    }

    /** Undoes a registration when its segment closes: the segment leaves the table and the store. */
    private final class Registration implements Runnable {
        private final String name;
        private final String key;
        private volatile ShmLocalSegment segment;
        private volatile int id;
        private volatile byte[] descriptor;

        Registration(String name, String key) {
            this.name = name;
            this.key = key;
        }

        @Override
        public void run() {
            table.remove(id);
            if (segment != null) locals.remove(name, segment);
            byte[] mine = descriptor;
            if (mine == null) return;
            try {
                Optional<byte[]> cur = store.get(key);
                if (cur.isPresent() && Arrays.equals(cur.get(), mine)) store.delete(key);
            } catch (StoreException e) {
                log.warn("Engine {}: could not remove the descriptor of segment {} from {}: {}", self.name(), name, store.uri(), e.getMessage());
            }
        }
    }

    // ------------------------------------------------------------------ remote segments

    /**
     * Opens segment {@code name}, waiting until the deadline for it to be registered. Returns the
     * cached segment while its peer is alive; once the peer has failed, waits for a replacement to
     * register the name again and opens that.
     */
    public RemoteSegment openSegment(String name, Deadline deadline) {
        ensureOpen();
        Objects.requireNonNull(name, "name");
        synchronized (openLocks.computeIfAbsent(name, k -> new Object())) {
            Opened cached = remotes.get(name);
            if (cached != null && cached.segment().alive()) return cached.segment();
            SegmentDescriptor d = awaitDescriptor(name, deadline, cached);
            Opened fresh = open(name, d, deadline);
            if (closed) {
                fresh.release();
                fresh.link().close();
                throw closedError();
            }
            remotes.put(name, fresh);
            if (cached != null) cached.release();
            return fresh.segment();
        }
    }

    /**
     * Forgets an opened segment: unmaps it (shm) and drops it from the cache. The connection to its
     * engine stays for other segments. Later calls on the forgotten {@link RemoteSegment} fail; call
     * this when the peer's segment is no longer used (a process group's previous epoch).
     */
    public void closeSegment(String name) {
        synchronized (openLocks.computeIfAbsent(name, k -> new Object())) {
            Opened o = remotes.remove(name);
            if (o != null) o.release();
        }
        openLocks.remove(name);
    }

    /** The descriptor of {@code name}; when {@code dead} is given, one from a different engine instance. */
    private SegmentDescriptor awaitDescriptor(String name, Deadline deadline, Opened dead) {
        String key = SEGMENT_KEY_PREFIX + name;
        try {
            byte[] cur = store.get(key).orElse(null);
            while (true) {
                if (cur != null) {
                    SegmentDescriptor d = SegmentDescriptor.decode(name, cur, store.uri());
                    if (dead == null || !d.instanceId().equals(dead.descriptor().instanceId())) return d;
                }
                if (deadline.expired()) {
                    if (dead == null) {
                        throw new TransferException("Failed to get description of " + name + ": no segment of that name is registered in the metadata store "
                                + store.uri() + ". The name must match what the peer registered; check that both sides use the same store and that the peer has started.");
                    }
                    throw new TransferException("Segment " + name + " belonged to engine " + dead.descriptor().engine() + ", which failed ("
                            + dead.link().failureReason() + "); no replacement process has registered " + name + " in the metadata store " + store.uri()
                            + " by the deadline.");
                }
                cur = store.awaitChange(key, cur, deadline).orElse(null);
            }
        } catch (StoreException e) {
            throw new TransferException("Failed to get description of " + name + ": " + e.getMessage(), e);
        }
    }

    private Opened open(String name, SegmentDescriptor d, Deadline deadline) {
        if (failedInstances.contains(d.instanceId())) {
            throw new TransferException("Segment " + name + " belongs to engine " + d.engine() + " (instance " + d.instanceId()
                    + "), which has failed: it is treated as gone. Wait for a replacement process to register " + name + " again.");
        }
        Route route = route(name, d);
        TcpPeerLink link = linkTo(name, d, deadline);
        if (route.shm()) {
            ShmRemoteSegment s = ShmRemoteSegment.map(name, d.engine(), Path.of(d.path()), d.size(), link);
            log.info("Engine {}: opened segment {} of engine {} over shm ({})", self.name(), name, d.engine(), route.why());
            return new Opened(s, d, link, s);
        }
        log.info("Engine {}: opened segment {} of engine {} over tcp to {} ({})", self.name(), name, d.engine(), d.address(), route.why());
        return new Opened(new TcpRemoteSegment(name, d.size(), d.segmentId(), link), d, link, null);
    }

    /** Chooses shm or tcp for a segment, or throws when the forced transport cannot reach it. */
    private Route route(String name, SegmentDescriptor d) {
        boolean sameHost = d.hostId().equals(hostId);
        boolean visible = sameHost && Files.exists(Path.of(d.path()));
        return switch (transport) {
            case TCP -> new Route(false, "transport forced to tcp by " + transportSource);
            case SHM -> {
                if (!sameHost) {
                    throw new TransferException("Transport shm is forced (" + transportSource + ") but segment " + name + " of engine " + d.engine()
                            + " lives on host " + d.hostId() + " (" + d.host() + "), not on this host (" + hostId + "): shm only reaches peers on"
                            + " the same host. Use transport auto or tcp.");
                }
                if (!visible) {
                    throw new TransferException("Transport shm is forced (" + transportSource + ") but the file " + d.path() + " of segment " + name
                            + " (engine " + d.engine() + ") is not visible here: the peer closed the segment, or runs in a container with its own"
                            + " /dev/shm. Share /dev/shm (docker --ipc=host) or use transport auto or tcp.");
                }
                yield new Route(true, "transport forced to shm by " + transportSource);
            }
            case AUTO -> visible ? new Route(true, "the peer runs on this host")
                    : new Route(false, sameHost ? "the peer runs on this host but its file " + d.path() + " is not visible here (separate /dev/shm)"
                            : "the peer runs on another host (" + d.hostId() + ")");
        };
    }

    /** The connection to the engine that registered {@code d}, made once per peer instance. */
    private TcpPeerLink linkTo(String segment, SegmentDescriptor d, Deadline deadline) {
        synchronized (linkLocks.computeIfAbsent(d.instanceId(), k -> new Object())) {
            TcpPeerLink l = links.get(d.instanceId());
            if (l != null && l.alive()) return l;
            l = TcpPeerLink.connect(self, new EngineIdentity(d.engine(), d.instanceId()), d.host(), d.port(),
                    hostAddress.isLoopbackAddress() ? null : hostAddress, segment, deadline, this::peerGone, token);
            if (closed || failedInstances.contains(d.instanceId())) {
                l.close();
                throw closed ? closedError() : new TransferException("Engine " + d.engine() + " failed while segment " + segment + " was being opened.");
            }
            links.put(d.instanceId(), l);
            return l;
        }
    }

    /**
     * Which transport would carry transfers to {@code segmentName}, through which address and
     * interface, and why; or {@code none: ...} with the reason nothing can. Looks the segment up
     * without waiting.
     */
    public String preferredTransport(String segmentName) {
        ensureOpen();
        Optional<byte[]> v;
        try {
            v = store.get(SEGMENT_KEY_PREFIX + segmentName);
        } catch (StoreException e) {
            return "none: the metadata store " + store.uri() + " cannot be read: " + e.getMessage();
        }
        if (v.isEmpty()) {
            return "none: no segment named " + segmentName + " is registered in the metadata store " + store.uri()
                    + " (the name must match what the peer registered)";
        }
        try {
            SegmentDescriptor d = SegmentDescriptor.decode(segmentName, v.get(), store.uri());
            if (failedInstances.contains(d.instanceId())) {
                return "none: segment " + segmentName + " belongs to engine " + d.engine() + ", which has failed";
            }
            Route r = route(segmentName, d);
            if (r.shm()) {
                return "shm: segment " + segmentName + " of engine " + d.engine() + " is mapped from " + d.path()
                        + " (a write is one memcpy); " + r.why();
            }
            return "tcp: to " + d.address() + " (engine " + d.engine() + ") from " + hostIp + " on interface "
                    + HostNetwork.interfaceOf(hostAddress) + "; " + r.why();
        } catch (TransferException e) {
            return "none: " + e.getMessage();
        }
    }

    // ------------------------------------------------------------------ failures

    /** Registers a listener told (on an I/O thread) when a peer engine is known to be gone. */
    public void addPeerFailureListener(PeerFailureListener listener) { listeners.add(Objects.requireNonNull(listener)); }

    public void removePeerFailureListener(PeerFailureListener listener) { listeners.remove(listener); }

    /** Every transport reports here; each peer instance fails once. */
    private void peerGone(String engineName, String instanceId, String reason) {
        if (closed || !failedInstances.add(instanceId)) return;
        TcpPeerLink l = links.remove(instanceId);
        if (l != null) l.fail(reason);
        log.info("Engine {}: peer engine {} failed: {}", self.name(), engineName, reason);
        for (PeerFailureListener x : listeners) {
            try {
                x.peerFailed(engineName, reason);
            } catch (RuntimeException e) {
                log.warn("Engine {}: a peer failure listener threw: {}", self.name(), e.toString());
            }
        }
    }

    // ------------------------------------------------------------------ batches

    /**
     * Starts a batch and returns at once; engine workers run the requests. Writes over tcp are
     * acknowledged, so a COMPLETED status means the peer has the bytes. Statuses are read with
     * {@link #status} and collected with {@link #await}, which releases the batch.
     *
     * <p>The local buffers are touched by engine threads: they must come from a shared, global or
     * automatic arena (a request on confined memory fails) and stay alive until {@link #await}
     * returns.
     */
    public BatchId submit(List<TransferRequest> requests) {
        ensureOpen();
        Batch b = new Batch(batchIds.incrementAndGet(), List.copyOf(requests));
        batches.put(b.id, b);
        for (int i = 0; i < b.size(); i++) {
            int index = i;
            try {
                workers.execute(() -> run(b, index));
            } catch (RejectedExecutionException e) {
                b.fail(index, closedError().getMessage());
            }
        }
        return new BatchId(b.id);
    }

    private void run(Batch b, int i) {
        if (b.status(i).done()) return;
        TransferRequest r = b.request(i);
        RemoteSegment t = r.target();
        try {
            String outside = SegmentRanges.outside(t.name(), t.size(), r.targetOffset(), r.length());
            if (outside == null) outside = SegmentRanges.outsideLocal(t.name(), r.local().byteSize(), r.localOffset(), r.length());
            if (outside != null) {
                b.fail(i, outside);
                return;
            }
            if (!r.local().isAccessibleBy(Thread.currentThread())) {
                b.fail(i, confined(i));
                return;
            }
            Deadline send = Deadline.after(operationTimeout);
            boolean write = r.opcode() == TransferRequest.Opcode.WRITE;
            if (t instanceof AsyncRemoteSegment a) {
                TransferHandle h = write
                        ? a.startWrite(r.targetOffset(), r.local(), r.localOffset(), r.length(), send, b.completion(i))
                        : a.startRead(r.targetOffset(), r.local(), r.localOffset(), r.length(), send, b.completion(i));
                b.attach(i, h);
            } else {
                if (write) t.write(r.targetOffset(), r.local(), r.localOffset(), r.length(), send);
                else t.read(r.targetOffset(), r.local(), r.localOffset(), r.length(), send);
                b.completion(i).completed(r.length());
            }
        } catch (WrongThreadException e) {
            b.fail(i, confined(i));
        } catch (RuntimeException e) {
            b.fail(i, e.getMessage() == null ? e.toString() : e.getMessage());
        }
    }

    private static String confined(int request) {
        return "The local buffer of request " + request + " is confined to another thread: batch requests run on engine threads,"
                + " so allocate it from a shared, global or automatic arena.";
    }

    /** The current status of request {@code index} of a batch. */
    public TransferStatus status(BatchId id, int index) {
        Batch b = batch(id);
        Objects.checkIndex(index, b.size());
        return b.status(index);
    }

    /**
     * Waits until every request of the batch is done or the deadline passes; requests still running
     * then are TIMEOUT (and abandoned: they no longer touch their local memory). Releases the batch.
     */
    public List<TransferStatus> await(BatchId id, Deadline deadline) {
        Batch b = batch(id);
        try {
            return b.await(deadline);
        } finally {
            batches.remove(b.id);
        }
    }

    private Batch batch(BatchId id) {
        Batch b = batches.get(id.value());
        if (b == null) {
            throw new IllegalArgumentException("Unknown batch " + id.value() + " on engine " + self.name()
                    + ": it was not submitted here or was already awaited (await releases a batch).");
        }
        return b;
    }

    // ------------------------------------------------------------------ lifecycle

    private void ensureOpen() {
        if (closed) throw closedError();
    }

    private TransferException closedError() {
        return new TransferException("Transfer engine " + self.name() + " is closed; create a new one.");
    }

    /**
     * Closes connections (saying goodbye to peers), stops and joins every thread, fails unfinished
     * batches, unmaps peers' segments, and closes this engine's segments (descriptors removed, files
     * deleted). Idempotent.
     */
    @Override
    public void close() {
        synchronized (this) {
            if (closed) return;
            closed = true;
        }
        OPEN.remove(this);
        log.info("Transfer engine {} closing", self.name());
        server.close();
        for (TcpPeerLink l : links.values()) l.close();
        links.clear();
        workers.shutdownNow();
        try {
            if (!workers.awaitTermination(5, TimeUnit.SECONDS)) log.warn("Engine {}: batch workers did not stop within 5 s", self.name());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        for (Batch b : batches.values()) {
            for (int i = 0; i < b.size(); i++) b.fail(i, closedError().getMessage());
        }
        for (Opened o : remotes.values()) o.release();
        remotes.clear();
        for (ShmLocalSegment s : new ArrayList<>(locals.values())) s.close();
        log.info("Transfer engine {} closed", self.name());
    }

    @Override
    public String toString() { return "TransferEngine[" + self.name() + " at " + hostIp + ":" + server.port() + ", " + transport + "]"; }

    /** Configures and starts a {@link TransferEngine}. Not thread-safe. */
    public static final class Builder {
        private MetadataStore store;
        private String name;
        private String hostIp;
        private int port;
        private TransportChoice transport;
        private List<String> deviceFilter = List.of();
        private Duration operationTimeout = Duration.ofSeconds(30);
        private String token;
        private boolean tokenSet;

        private Builder() {}

        /** Where descriptors are published and looked up (required). */
        public Builder store(MetadataStore store) {
            this.store = store;
            return this;
        }

        /** The engine's name, unique among live engines (default: hostname-pid). */
        public Builder name(String engineName) {
            this.name = engineName;
            return this;
        }

        /** The address to listen on and advertise (default: MOONCAKE_HOST_IP, else the first non-loopback IPv4 of an up interface, else 127.0.0.1). */
        public Builder hostIp(String hostIp) {
            this.hostIp = hostIp;
            return this;
        }

        /** The TCP port to listen on; 0 (the default) lets the system choose. */
        public Builder port(int port) {
            this.port = port;
            return this;
        }

        /** Forces a transport (default: MOONCAKE_TRANSPORT, else AUTO). */
        public Builder transport(TransportChoice transport) {
            this.transport = transport;
            return this;
        }

        /** Interface names the default host IP may come from (empty = any). */
        public Builder deviceFilter(List<String> devices) {
            this.deviceFilter = List.copyOf(devices);
            return this;
        }

        /**
         * The bound on work that has no caller deadline: sending a batch request, and answering a
         * peer's read (a peer that does not take its answer within it loses the connection).
         */
        public Builder operationTimeout(Duration timeout) {
            if (timeout.isNegative() || timeout.isZero()) throw new IllegalArgumentException("operation timeout must be positive: " + timeout);
            this.operationTimeout = timeout;
            return this;
        }

        /**
         * The group token: a secret every engine of the group shares. Each TCP connection is then
         * authenticated both ways (challenge-response with HMAC-SHA256; the secret never crosses
         * the wire), so an engine without it can neither write into nor read from this engine's
         * segments, and this engine sends no data to one that lacks it. Default: env
         * {@code MOONCAKE_TOKEN}, else none. {@code null} turns authentication off even when the
         * variable is set; a blank secret is refused. Peers where only one side has a token refuse
         * each other. Data is not encrypted.
         */
        public Builder token(String secret) {
            GroupToken.of(secret); // refuses a blank secret here, where the caller can see it
            this.token = secret;
            this.tokenSet = true;
            return this;
        }

        /** Binds the server and starts the engine. */
        public TransferEngine start() { return new TransferEngine(this); }
    }
}
