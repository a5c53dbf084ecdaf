package org.mooncake4j.pg;

import java.net.URI;
import java.time.Duration;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;

/**
 * Builds a {@link ProcessGroup}. Rendezvous, in order: {@link #rendezvous(URI)}; env
 * {@code MOONCAKE_STORE} (a store URI, e.g. set by {@code mooncake4j run}); env
 * {@code MASTER_ADDR}/{@code MASTER_PORT} (an embedded store that rank 0 hosts, as torchrun users
 * expect). Rank and world size default to {@code RANK} and {@code WORLD_SIZE}.
 */
public final class ProcessGroupBuilder {
    private String backend = ProcessGroup.BACKEND_CPU;
    private Integer rank;
    private Integer worldSize;
    private URI rendezvous;
    private MetadataStore store;
    private MooncakeBackendOptions options;
    private Duration timeout;
    private String token;
    private boolean tokenSet;

    ProcessGroupBuilder() {}

    public ProcessGroupBuilder backend(String b) { this.backend = b; return this; }

    public ProcessGroupBuilder rank(int r) { this.rank = r; return this; }

    public ProcessGroupBuilder worldSize(int n) { this.worldSize = n; return this; }

    /** {@code tcp://host:port} (embedded store; rank 0 hosts it unless {@code MOONCAKE_STORE_HOSTED=1}) or {@code etcd://host:port/prefix}. */
    public ProcessGroupBuilder rendezvous(URI uri) { this.rendezvous = uri; return this; }

    /** Uses an already open store (the caller closes it). */
    public ProcessGroupBuilder store(MetadataStore s) { this.store = s; return this; }

    public ProcessGroupBuilder options(MooncakeBackendOptions o) { this.options = o; return this; }

    /** Deadline for each operation and for init (default {@code MOONCAKE_TIMEOUT_MS}, else 60 s). */
    public ProcessGroupBuilder timeout(Duration t) { this.timeout = t; return this; }

    /**
     * The group token, a secret every process of the group shares: this process's transfer engine,
     * the embedded store it opens and the one it hosts as rank 0 authenticate every connection with
     * it (challenge-response; the secret never crosses the wire), so a process without it can
     * neither join, nor read or write the group's memory or metadata. Default: env
     * {@code MOONCAKE_TOKEN}, else none. {@code null} turns authentication off even when the
     * variable is set; a blank secret is refused. Not applied to a store passed to {@link #store}
     * (opened by the caller) nor to an etcd store. Data is not encrypted.
     */
    public ProcessGroupBuilder token(String secret) {
        GroupToken.of(secret); // refuses a blank secret here, where the caller sees it
        this.token = secret;
        this.tokenSet = true;
        return this;
    }

    public ProcessGroup init() {
        int r = rank != null ? rank : envInt("RANK");
        int n = worldSize != null ? worldSize : envInt("WORLD_SIZE");
        if (n <= 0) throw new IllegalArgumentException("world_size must be positive, got " + n);
        String b = backend.toLowerCase(Locale.ROOT);
        if (!b.equals(ProcessGroup.BACKEND_CPU) && !b.equals(ProcessGroup.BACKEND_CUDA)) {
            throw new IllegalArgumentException("Unknown backend '" + backend + "': use 'mooncake-cpu' (host memory) or 'mooncake' (CUDA)");
        }
        MooncakeBackendOptions opts = options != null ? options
                : new MooncakeBackendOptions(Tensor.ones(DType.INT32, b.equals(ProcessGroup.BACKEND_CUDA)
                        ? Device.cuda(org.mooncake4j.cuda.CudaDevice.ordinalForLocalRank(envIntOr("LOCAL_RANK", 0))) : Device.CPU, n));
        int slots = validate(b, opts, n);
        if (r < 0 || r >= slots) throw new IllegalArgumentException("rank " + r + " is out of range [0, " + slots + ")");
        Duration t = timeout != null ? timeout : Duration.ofMillis(Long.parseLong(env("MOONCAKE_TIMEOUT_MS", "60000")));
        GroupRuntime runtime = openRuntime(r, t);
        try {
            return new ProcessGroup(runtime, b, "world", r, n, slots, opts.activeRanks(), opts.isExtension(), null, t,
                    opts.activeRanks().device().isCuda() ? opts.activeRanks().device().index() : -1);
        } catch (RuntimeException e) {
            runtime.release();
            throw e;
        }
    }

    /** Checks the options with the seeds' messages; returns the slot count (max world size). */
    static int validate(String backend, MooncakeBackendOptions o, int worldSize) {
        Tensor a = o.activeRanks();
        if (a == null) throw new IllegalArgumentException("activeRanks must not be null");
        if (a.dtype() != DType.INT32) throw new IllegalArgumentException("activeRanks must be int.");
        if (backend.equals(ProcessGroup.BACKEND_CPU) && !a.device().isCpu()) throw new IllegalArgumentException("activeRanks must be on CPU.");
        if (backend.equals(ProcessGroup.BACKEND_CUDA) && !a.device().isCuda()) throw new IllegalArgumentException("activeRanks must be on GPU.");
        if (o.hasMaxWorldSize()) {
            if (a.numel() != o.maxWorldSize()) throw new IllegalArgumentException("activeRanks must be sized to max_world_size when max_world_size is set");
            if (o.maxWorldSize() < worldSize) {
                throw new IllegalArgumentException("max_world_size " + o.maxWorldSize() + " is smaller than world_size " + worldSize);
            }
            return o.maxWorldSize();
        }
        if (a.numel() != worldSize) {
            throw new IllegalArgumentException("activeRanks has " + a.numel() + " entries but world_size is " + worldSize
                    + "; size it to world_size (or to max_world_size when that is set)");
        }
        return worldSize;
    }

    private GroupRuntime openRuntime(int r, Duration t) {
        String nonce = ProcessHandle.current().pid() + "-" + Long.toHexString(System.nanoTime() & 0xffffff);
        EmbeddedStoreServer hosted = null;
        MetadataStore s = store;
        boolean owns = false;
        if (s == null) {
            URI uri = rendezvous;
            boolean mayHost = true;
            if (uri == null && System.getenv("MOONCAKE_STORE") != null) {
                uri = URI.create(System.getenv("MOONCAKE_STORE"));
                mayHost = false;
            }
            if (uri == null && System.getenv("MASTER_ADDR") != null) {
                uri = URI.create("tcp://" + System.getenv("MASTER_ADDR") + ":" + env("MASTER_PORT", "29500"));
            }
            if (uri == null) {
                throw new IllegalArgumentException("No rendezvous: set MASTER_ADDR and MASTER_PORT (rank 0 hosts the store), or MOONCAKE_STORE=tcp://host:port | etcd://host:port/prefix, or call rendezvous(URI). Start with 'mooncake4j run' to have them set.");
            }
            if (mayHost && r == 0 && "tcp".equalsIgnoreCase(uri.getScheme()) && !"1".equals(System.getenv("MOONCAKE_STORE_HOSTED"))) {
                hosted = tokenSet ? EmbeddedStoreServer.start(uri.getHost(), uri.getPort(), token)
                        : EmbeddedStoreServer.start(uri.getHost(), uri.getPort());
            }
            s = tokenSet ? MetadataStores.open(uri, t, token) : MetadataStores.open(uri, t);
            owns = true;
        }
        final MetadataStore fs = s;
        TransferEngine engine = Mooncake.acquireEngine(() -> {
            TransferEngine.Builder eb = TransferEngine.builder()
                    .store(fs)
                    .name("rank" + r + "-" + nonce)
                    .hostIp(Mooncake.hostIp())
                    .deviceFilter(Mooncake.deviceFilter());
            if (tokenSet) eb.token(token);
            return eb.start();
        });
        if (tokenSet && !engine.usesToken(token)) {
            // the process-wide engine was started earlier (another group, or Mooncake.setTransferEngine) with another token:
            // this group's peers would be refused by it, or it would let in processes outside this group
            Mooncake.releaseEngine(engine);
            if (owns) s.close();
            if (hosted != null) hosted.close();
            String differs = token == null ? "uses a group token, but ProcessGroup.builder().token(null) turned authentication off"
                    : engine.authenticated() ? "uses a different group token from the one given to ProcessGroup.builder().token(...)"
                    : "has no group token, but ProcessGroup.builder().token(...) gave one";
            throw new IllegalStateException("This process's transfer engine " + engine.name() + " " + differs + ", and every group of a process"
                    + " shares that engine. Give every group of this process the same token (or set MOONCAKE_TOKEN and pass none).");
        }
        return new GroupRuntime(s, owns, engine, hosted, nonce);
    }

    private static String env(String k, String def) {
        String v = System.getenv(k);
        return v == null || v.isBlank() ? def : v.trim();
    }

    private static int envIntOr(String k, int def) {
        String v = System.getenv(k);
        return v == null || v.isBlank() ? def : Integer.parseInt(v.trim());
    }

    private static int envInt(String k) {
        String v = System.getenv(k);
        if (v == null) throw new IllegalArgumentException(k + " is not set: pass it to the builder or start with 'mooncake4j run'");
        return Integer.parseInt(v.trim());
    }
}
