using Microsoft.ML.OnnxRuntime;

namespace OrtFinetune.Training.Runtime;

/// <summary>Where training runs: "cpu", "cuda" or "cuda:N".</summary>
public sealed record DeviceSpec(string Kind, int Index)
{
    public static readonly DeviceSpec Cpu = new("cpu", 0);
    public bool IsCuda => Kind == "cuda";

    public static DeviceSpec Parse(string text)
    {
        var t = text.Trim().ToLowerInvariant();
        if (t == "cpu") return Cpu;
        if (t == "cuda") return new("cuda", 0);
        if (t.StartsWith("cuda:") && int.TryParse(t[5..], out var i) && i >= 0) return new("cuda", i);
        throw new TrainingException($"device '{text}' is not valid (use cpu, cuda or cuda:N)");
    }

    public override string ToString() => IsCuda ? $"cuda:{Index}" : "cpu";

    /// <summary>Session options for this device. CUDA never falls back silently to the CPU.</summary>
    public SessionOptions CreateSessionOptions(int intraOpThreads = 0, bool cpuArena = true)
    {
        var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, EnableCpuMemArena = cpuArena };
        if (intraOpThreads > 0) so.IntraOpNumThreads = intraOpThreads;
        if (IsCuda)
        {
            try
            {
                using var cuda = new OrtCUDAProviderOptions();
                cuda.UpdateOptions(CudaProviderOptions());
                so.AppendExecutionProvider_CUDA(cuda);
                if (SharedCudaArena()) so.AddSessionConfigEntry("session.use_env_allocators", "1");
            }
            catch (Exception e) when (e is OnnxRuntimeException or EntryPointNotFoundException or DllNotFoundException)
            {
                so.Dispose();
                throw new TrainingException(
                    $"the CUDA execution provider is not available for device {this}: {e.Message.Trim()} " +
                    "(build with -p:OrtGpu=true to use Microsoft.ML.OnnxRuntime.Gpu.Linux 1.31.0, and make libcudart.so.13, libcublas.so.13 and libcudnn.so.9 loadable through LD_LIBRARY_PATH)", e);
            }
        }
        return so;
    }

    /// <summary>
    /// The CUDA provider's settings: the arena grows by what is asked (ORT's default doubles its chunks,
    /// which can hold twice the memory a step needs); TF32 off, so that fp32 products are IEEE fp32 as
    /// PyTorch's matmul default and "32-true" mean; cuDNN picks convolution algorithms by its heuristics
    /// (an exhaustive search costs seconds per shape and memory for workspaces).
    /// </summary>
    public Dictionary<string, string> CudaProviderOptions() => new()
    {
        ["device_id"] = Index.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["arena_extend_strategy"] = "kSameAsRequested",
        ["use_tf32"] = "0",
        ["cudnn_conv_algo_search"] = "HEURISTIC",
        ["do_copy_in_default_stream"] = "1",
    };

    static readonly Dictionary<int, bool> SharedArenas = new();

    /// <summary>
    /// One CUDA memory arena per device for the whole process, registered with ORT's environment, which
    /// every session of this device uses: the training, evaluation and optimizer sessions (and the
    /// trainer's persistent buffers) then draw from one pool, instead of each session's own arena
    /// keeping its own high-water mark. Falls back to per-session arenas (false) where ORT refuses it,
    /// or when ORTFINETUNE_CUDA_SHARED_ARENA=0.
    /// </summary>
    bool SharedCudaArena()
    {
        if (Environment.GetEnvironmentVariable("ORTFINETUNE_CUDA_SHARED_ARENA") == "0") return false;
        lock (SharedArenas)
        {
            if (SharedArenas.TryGetValue(Index, out var ok)) return ok;
            try
            {
                using var info = MemoryInfo();
                // max_mem 0 (ORT's default), arena_extend_strategy 1 (kSameAsRequested), the rest ORT's defaults.
                using var arena = new OrtArenaCfg(0, 1, -1, -1);
                OrtEnv.Instance().CreateAndRegisterAllocator("CUDAExecutionProvider", info, arena, CudaProviderOptions());
                ok = true;
            }
            catch (OnnxRuntimeException e)
            {
                Console.Error.WriteLine($"warning: no shared CUDA arena for {this} ({e.Message.Trim()}); each session keeps its own");
                ok = false;
            }
            return SharedArenas[Index] = ok;
        }
    }

    /// <summary>
    /// ORT graph optimizers left out of training sessions. CommonSubexpressionElimination merges a node
    /// the backward recomputes from a saved input (cheaper to recompute than to keep, e.g. the erf-GELU
    /// derivative's x/√2) with its forward twin, which keeps the forward result alive until the
    /// backward: the very activation memory the recomputation was meant to save.
    /// </summary>
    public const string TrainingDisabledOptimizers = "CommonSubexpressionElimination";

    /// <summary><see cref="CreateSessionOptions"/> for the graphs a trainer runs (see <see cref="TrainingDisabledOptimizers"/>).</summary>
    public SessionOptions CreateTrainingSessionOptions(int intraOpThreads = 0, bool cpuArena = true)
    {
        var so = CreateSessionOptions(intraOpThreads, cpuArena);
        so.AddSessionConfigEntry("optimization.disable_specified_optimizers", TrainingDisabledOptimizers);
        return so;
    }

    public OrtMemoryInfo MemoryInfo() => IsCuda
        ? new OrtMemoryInfo(OrtMemoryInfo.allocatorCUDA, OrtAllocatorType.ArenaAllocator, Index, OrtMemType.Default)
        : OrtMemoryInfo.DefaultInstance;
}

/// <summary>A training run cannot go on; the message says what and why.</summary>
public sealed class TrainingException : Exception
{
    public TrainingException(string message, Exception? inner = null) : base(message, inner) { }
}
