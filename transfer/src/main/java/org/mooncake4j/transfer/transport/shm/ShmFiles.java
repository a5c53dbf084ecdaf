package org.mooncake4j.transfer.transport.shm;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.concurrent.atomic.AtomicLong;
import org.mooncake4j.transfer.TransferException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The files behind local segments. A segment lives in {@code /dev/shm} (memory-backed, so a peer on
 * the same host that maps it shares the pages) or, when that is absent or too small, in
 * {@code java.io.tmpdir}. File names are {@code mooncake4j-<engine>-<pid>-ns<pid namespace>-<segment>-<n>}:
 * the pid and its namespace let a later process find and remove the files a killed process left
 * behind, without mistaking a live process of another container (whose pids mean something else)
 * for a dead one.
 *
 * <p>Stateless apart from a sequence counter; thread-safe.
 */
public final class ShmFiles {
    private static final Logger log = LoggerFactory.getLogger(ShmFiles.class);
    private static final String PREFIX = "mooncake4j-";
    private static final Path DEV_SHM = Path.of("/dev/shm");
    private static final int ZERO_CHUNK = 1 << 20;
    private static final AtomicLong SEQUENCE = new AtomicLong();
    private static final String PID_NAMESPACE = pidNamespace();

    private ShmFiles() {}

    /** The inode of this process's pid namespace ("unknown" where /proc does not say). */
    private static String pidNamespace() {
        try {
            String link = Files.readSymbolicLink(Path.of("/proc/self/ns/pid")).toString();
            String digits = link.replaceAll("\\D", "");
            return digits.isEmpty() ? "unknown" : digits;
        } catch (IOException | UnsupportedOperationException e) {
            return "unknown";
        }
    }

    /** Letters, digits, '.' and '_' only (so '-' separates the fields of a file name), at most 48 characters. */
    static String sanitize(String s) {
        StringBuilder b = new StringBuilder(Math.min(s.length(), 48));
        for (int i = 0; i < s.length() && b.length() < 48; i++) {
            char c = s.charAt(i);
            b.append(c < 128 && (Character.isLetterOrDigit(c) || c == '.' || c == '_') ? c : '_');
        }
        return b.toString();
    }

    /** The beginning of every file name an engine of this name creates in process {@code pid}. */
    static String prefix(String engineName, long pid) {
        return PREFIX + sanitize(engineName) + "-" + pid + "-ns" + PID_NAMESPACE + "-";
    }

    /**
     * The directory for a new segment of {@code bytes}: /dev/shm when it exists and has room, else
     * java.io.tmpdir when that has room. Fails naming the size and the capacity of both.
     */
    public static Path chooseDirectory(String segmentName, long bytes) {
        Path tmp = Path.of(System.getProperty("java.io.tmpdir"));
        long shmFree = usable(DEV_SHM);
        if (shmFree >= bytes) return DEV_SHM;
        long tmpFree = usable(tmp);
        String shmState = shmFree < 0 ? "/dev/shm is absent or not writable"
                : "/dev/shm has " + shmFree + " bytes free of " + total(DEV_SHM);
        if (tmpFree >= bytes) {
            log.warn("Segment {} of {} bytes does not fit in shared memory ({}); using {} instead, which may be disk-backed and slower. "
                    + "Enlarge /dev/shm (docker --shm-size, or mount -o remount,size=...) for full speed.", segmentName, bytes, shmState, tmp);
            return tmp;
        }
        throw new TransferException("Cannot register segment " + segmentName + " of " + bytes + " bytes: " + shmState
                + ", and the fallback directory " + tmp + " has " + Math.max(tmpFree, 0) + " bytes free. Free space in /dev/shm"
                + " (stale mooncake4j-* files of dead processes can be deleted), enlarge it (docker --shm-size, or mount -o remount,size=...),"
                + " or register a smaller segment.");
    }

    private static long usable(Path dir) {
        try {
            if (!Files.isDirectory(dir) || !Files.isWritable(dir)) return -1;
            return Files.getFileStore(dir).getUsableSpace();
        } catch (IOException e) {
            return -1;
        }
    }

    private static long total(Path dir) {
        try {
            return Files.getFileStore(dir).getTotalSpace();
        } catch (IOException e) {
            return -1;
        }
    }

    /**
     * Deletes the segment files in {@code dir} whose process is gone: files of any engine created in
     * this pid namespace, and where the namespace is unknown, files of engine {@code engineName}.
     * Returns how many were removed.
     */
    public static int removeStale(Path dir, String engineName) {
        String own = sanitize(engineName);
        int removed = 0;
        try (DirectoryStream<Path> files = Files.newDirectoryStream(dir, PREFIX + "*")) {
            for (Path f : files) {
                String[] field = f.getFileName().toString().substring(PREFIX.length()).split("-");
                if (field.length != 5 || !field[2].equals("ns" + PID_NAMESPACE)) continue;
                if (PID_NAMESPACE.equals("unknown") && !field[0].equals(own)) continue;
                long pid;
                try {
                    pid = Long.parseLong(field[1]);
                } catch (NumberFormatException e) {
                    continue;
                }
                if (ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) continue;
                if (Files.deleteIfExists(f)) {
                    removed++;
                    log.info("Removed stale segment file {} (its process {} is gone)", f, pid);
                }
            }
        } catch (IOException e) {
            log.warn("Could not scan {} for stale segment files: {}", dir, e.toString());
        }
        return removed;
    }

    /**
     * Creates, reserves (so that running out of shared memory fails here, not as a fault on first
     * touch), zeroes and maps the file of a new local segment. {@code unregister} runs first when the
     * segment is closed.
     */
    public static ShmLocalSegment create(Path dir, String engineName, String segmentName, long bytes, Runnable unregister) {
        Path file = dir.resolve(prefix(engineName, ProcessHandle.current().pid()) + sanitize(segmentName) + "-" + SEQUENCE.incrementAndGet());
        Arena arena = Arena.ofShared();
        boolean ok = false;
        try (FileChannel ch = FileChannel.open(file, java.util.Set.of(StandardOpenOption.CREATE_NEW, StandardOpenOption.READ,
                StandardOpenOption.WRITE), PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")))) {
            reserve(ch, bytes);
            MemorySegment memory = ch.map(FileChannel.MapMode.READ_WRITE, 0, bytes, arena);
            if (memory.address() % 64 != 0) {
                throw new TransferException("Mapping of " + file + " is not 64-byte aligned (address " + memory.address() + ")");
            }
            ok = true;
            return new ShmLocalSegment(segmentName, file, arena, memory, unregister);
        } catch (IOException e) {
            throw new TransferException("Cannot create the file of segment " + segmentName + " (" + bytes + " bytes) at " + file + ": " + e
                    + ". Check that " + dir + " is writable and has room (df -h " + dir + ").", e);
        } finally {
            if (!ok) {
                arena.close();
                deleteQuietly(file);
            }
        }
    }

    /** Writes zeros over the whole file: allocates every page now, and leaves the memory zeroed. */
    private static void reserve(FileChannel ch, long bytes) throws IOException {
        ByteBuffer zeros = ByteBuffer.allocateDirect((int) Math.min(ZERO_CHUNK, bytes));
        long pos = 0;
        while (pos < bytes) {
            zeros.clear().limit((int) Math.min(zeros.capacity(), bytes - pos));
            pos += ch.write(zeros, pos);
        }
    }

    static void deleteQuietly(Path file) {
        try {
            Files.deleteIfExists(file);
        } catch (IOException e) {
            log.warn("Could not delete segment file {}: {}", file, e.toString());
        }
    }
}
