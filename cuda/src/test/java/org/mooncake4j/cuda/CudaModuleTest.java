package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/** The fatbin resource and its architecture record, as built by build-kernels.sh. */
class CudaModuleTest {

    /** Where build-kernels.sh looks for nvcc: NVCC, PATH, /usr/local/cuda/bin, /usr/local/bin. */
    private static boolean nvccOnThisMachine() {
        String explicit = System.getenv("NVCC");
        if (explicit != null && Files.isExecutable(Path.of(explicit))) return true;
        String path = System.getenv().getOrDefault("PATH", "");
        return Stream.concat(Stream.of(path.split(":")).filter(s -> !s.isEmpty()).map(d -> Path.of(d, "nvcc")),
                        Stream.of(Path.of("/usr/local/cuda/bin/nvcc"), Path.of("/usr/local/bin/nvcc")))
                .anyMatch(Files::isExecutable);
    }

    @Test
    void fatbinIsBuiltExactlyWhenNvccIsPresent() {
        boolean built = CudaModule.class.getResource(CudaModule.FATBIN_RESOURCE) != null;
        assertThat(built).as("kernels.fatbin present (nvcc on this machine: %s)", nvccOnThisMachine())
                .isEqualTo(nvccOnThisMachine());
        if (built) {
            assertThat(CudaModule.readKernelImage(CudaModule.FATBIN_RESOURCE)).hasSizeGreaterThan(1000);
            assertThat(CudaModule.kernelArchitectures()).contains("sm_90", "compute_90");
            assertThat(CudaModule.coversComputeCapability(9, 0)).isTrue();
            assertThat(CudaModule.coversComputeCapability(10, 0)).isTrue();
            assertThat(CudaModule.coversComputeCapability(8, 0)).isFalse();
        } else {
            assertThat(CudaModule.kernelArchitectures()).isEmpty();
            assertThatThrownBy(() -> CudaModule.readKernelImage(CudaModule.FATBIN_RESOURCE))
                    .isInstanceOf(CudaUnavailableException.class).hasMessage(CudaModule.KERNELS_NOT_BUILT_MESSAGE);
        }
    }

    @Test
    void missingKernelsSayHowToGetThem() {
        assertThatThrownBy(() -> CudaModule.readKernelImage("/org/mooncake4j/cuda/no-such.fatbin"))
                .isInstanceOf(CudaUnavailableException.class)
                .hasMessage("CUDA kernels were not built (nvcc was not found when mooncake4j was built); rebuild on a"
                        + " machine with nvcc (CUDA 12.4+) to use the 'mooncake' backend.");
        assertThat(CudaModule.readArchitectures("/org/mooncake4j/cuda/no-such.properties")).isEmpty();
    }

    @Test
    void kernelsThatDoNotCoverTheGpuSayWhichArchitecturesWereBuiltAndWhatToBuild() {
        List<String> archs = List.of("sm_90", "sm_100", "compute_90");
        assertThat(CudaModule.covers(archs, 8, 0)).isFalse();
        assertThat(CudaModule.notCoveredMessage(archs, "cuda:0 (NVIDIA A100-SXM4-80GB, compute capability 8.0)", "8.0"))
                .isEqualTo("The CUDA kernels of mooncake4j were built for sm_90, sm_100, compute_90, which do not cover cuda:0"
                        + " (NVIDIA A100-SXM4-80GB, compute capability 8.0); rebuild mooncake4j-cuda with nvcc targeting compute capability 8.0.");
    }

    @Test
    void machineCodeRunsOnLaterMinorVersionsOfItsMajorOnly() {
        List<String> archs = List.of("sm_90", "sm_100");
        assertThat(CudaModule.covers(archs, 9, 0)).isTrue();
        assertThat(CudaModule.covers(archs, 10, 0)).isTrue();
        assertThat(CudaModule.covers(archs, 10, 3)).isTrue();
        assertThat(CudaModule.covers(archs, 8, 9)).isFalse();
        assertThat(CudaModule.covers(archs, 12, 0)).isFalse();
        assertThat(CudaModule.covers(List.of("sm_103"), 10, 0)).isFalse();
    }

    @Test
    void ptxIsCompiledForItsVersionAndEveryLaterOne() {
        List<String> archs = List.of("compute_90");
        assertThat(CudaModule.covers(archs, 9, 0)).isTrue();
        assertThat(CudaModule.covers(archs, 12, 1)).isTrue();
        assertThat(CudaModule.covers(archs, 8, 9)).isFalse();
    }

    @Test
    void architectureSpecificTargetsRunOnlyOnTheirExactVersion() {
        assertThat(CudaModule.covers(List.of("sm_90a"), 9, 0)).isTrue();
        assertThat(CudaModule.covers(List.of("sm_100a", "compute_100a"), 10, 3)).isFalse();
        assertThat(CudaModule.covers(List.of(), 9, 0)).isFalse();
    }
}
