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

    static readonly object PoolLock = new();
    static int? _poolThreads;

    /// <summary>
    /// Gives the process one ORT intra-op thread pool of <paramref name="intraOpThreads"/> threads (0 = ORT's default, one
    /// per physical core), shared by every session later made with that thread count (<see cref="CreateSessionOptions"/>).
    /// Must come before anything else makes ORT's environment; the host calls it first thing in train and benchmark.
    /// Returns false, and sessions keep a pool each, where the environment already exists.
    /// </summary>
    /// <remarks>
    /// Why: a trainer runs three sessions (training step, optimizer, evaluation) in turn, and with a pool each, the
    /// threads of the pools that just ran spin (ORT's allow_spinning) while the next session's pool works and the
    /// data loader's threads decode: on 2 cores vit-tiny at 16 px trained at 561 images/s with three pools and
    /// 838 with one (docs/benchmarks.md, "One thread pool per process"); ViT-B/16, one long session, kept its step time.
    /// </remarks>
    public static bool UseProcessThreadPool(int intraOpThreads)
    {
        lock (PoolLock)
        {
            if (_poolThreads is int n) return n == intraOpThreads;
            if (OrtEnv.IsCreated) return false;
            using var threading = new OrtThreadingOptions { GlobalIntraOpNumThreads = intraOpThreads, GlobalInterOpNumThreads = 1 };
            var options = new EnvironmentCreationOptions { threadOptions = threading, logLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING };
            OrtEnv.CreateInstanceWithOptions(ref options);
            _poolThreads = intraOpThreads;
            return true;
        }
    }

    /// <summary>
    /// Session options for this device. CUDA never falls back silently to the CPU. A session with the thread count of the
    /// process's pool (<see cref="UseProcessThreadPool"/>) runs on that pool; any other gets its own.
    /// </summary>
    public SessionOptions CreateSessionOptions(int intraOpThreads = 0, bool cpuArena = true)
    {
        var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, EnableCpuMemArena = cpuArena };
        bool shared;
        lock (PoolLock) shared = _poolThreads == intraOpThreads;
        if (shared) so.DisablePerSessionThreads();
        else if (intraOpThreads > 0) so.IntraOpNumThreads = intraOpThreads;
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
        ["arena_extend_strategy"] = MemorySettings.Current.ArenaExtendStrategy == 1 ? "kSameAsRequested" : "kNextPowerOfTwo",
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
                // max_mem 0 (ORT's default), the rest from MemorySettings (kSameAsRequested by default).
                var m = MemorySettings.Current;
                using var arena = new OrtArenaCfg(0, m.ArenaExtendStrategy, m.InitialChunkBytes, m.MaxDeadBytesPerChunk);
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

    /// <summary>
    /// <see cref="CreateSessionOptions"/> for the graphs a trainer runs (see <see cref="TrainingDisabledOptimizers"/>),
    /// with the memory settings of <see cref="MemorySettings"/>: ORT's memory-pattern planner off, and on the CPU with
    /// the arena on, one arena per process shared by every training session, configured by <see cref="MemorySettings"/>.
    /// </summary>
    public SessionOptions CreateTrainingSessionOptions(int intraOpThreads = 0, bool cpuArena = true)
    {
        var m = MemorySettings.Current;
        var so = CreateSessionOptions(intraOpThreads, cpuArena);
        so.AddSessionConfigEntry("optimization.disable_specified_optimizers", TrainingDisabledOptimizers);
        so.EnableMemoryPattern = m.MemoryPattern;
        if (!IsCuda && cpuArena && m.SharedCpuArena && SharedCpuArena(m)) so.AddSessionConfigEntry("session.use_env_allocators", "1");
        return so;
    }

    /// <summary>
    /// The run options of a trainer's Run calls: with <see cref="MemorySettings.ArenaShrinkage"/>, the arena of this device
    /// returns the regions no tensor uses at the end of every Run (ORT's <c>memory.enable_memory_arena_shrinkage</c>).
    /// </summary>
    public RunOptions CreateRunOptions()
    {
        var ro = new RunOptions();
        ConfigureRunOptions(ro);
        return ro;
    }

    /// <summary>Applies this device's run settings (see <see cref="CreateRunOptions"/>) to run options a caller owns.</summary>
    public void ConfigureRunOptions(RunOptions ro)
    {
        if (MemorySettings.Current.ArenaShrinkage)
            ro.AddRunConfigEntry("memory.enable_memory_arena_shrinkage", IsCuda ? $"gpu:{Index}" : "cpu:0");
    }

    static bool? _sharedCpuArena;

    /// <summary>
    /// One CPU arena for the whole process, registered with ORT's environment and used by every training session
    /// with the arena on (session.use_env_allocators), configured by <see cref="MemorySettings"/> (the per-session
    /// CPU arena cannot be configured: it doubles its regions, kNextPowerOfTwo). False where ORT refuses it.
    /// </summary>
    static bool SharedCpuArena(MemorySettings m)
    {
        lock (SharedArenas)
        {
            if (_sharedCpuArena is bool done) return done;
            try
            {
                using var info = new OrtMemoryInfo(OrtMemoryInfo.allocatorCPU, OrtAllocatorType.ArenaAllocator, 0, OrtMemType.Default);
                using var arena = new OrtArenaCfg(0, m.ArenaExtendStrategy, m.InitialChunkBytes, m.MaxDeadBytesPerChunk);
                OrtEnv.Instance().CreateAndRegisterAllocator(info, arena);
                _sharedCpuArena = true;
            }
            catch (OnnxRuntimeException e)
            {
                Console.Error.WriteLine($"warning: no shared CPU arena ({e.Message.Trim()}); each session keeps its own");
                _sharedCpuArena = false;
            }
            return _sharedCpuArena.Value;
        }
    }

    /// <summary>
    /// What a run holds besides its tensors, for the memory model (Compiler.Scheduling.MemoryModel): on the CPU the
    /// process itself (.NET runtime, ONNX Runtime and its thread pool, the loaded graphs); on CUDA the context, cuBLAS
    /// and cuDNN handles and workspaces. Calibrated on measured runs (docs/benchmarks.md, "Memory model").
    /// </summary>
    public long RuntimeAllowanceBytes => IsCuda ? CudaRuntimeAllowance : CpuRuntimeAllowance;

    const long CpuRuntimeAllowance = 300L << 20;
    const long CudaRuntimeAllowance = 1400L << 20;

    public OrtMemoryInfo MemoryInfo() => IsCuda
        ? new OrtMemoryInfo(OrtMemoryInfo.allocatorCUDA, OrtAllocatorType.ArenaAllocator, Index, OrtMemType.Default)
        : OrtMemoryInfo.DefaultInstance;
}

/// <summary>
/// How training sessions use memory, for every device, in one place. Defaults are what measured best (docs/benchmarks.md,
/// "Arena and memory patterns"); each can be overridden for an experiment by an environment variable:
/// ORTFINETUNE_MEMORY_PATTERN (0/1), ORTFINETUNE_ARENA_EXTEND (0 kNextPowerOfTwo, 1 kSameAsRequested),
/// ORTFINETUNE_ARENA_INITIAL_CHUNK (bytes, -1 ORT's default), ORTFINETUNE_ARENA_MAX_DEAD_BYTES (bytes, -1 ORT's default),
/// ORTFINETUNE_CPU_SHARED_ARENA (0/1), ORTFINETUNE_ARENA_SHRINKAGE (0/1).
/// </summary>
public sealed record MemorySettings
{
    /// <summary>
    /// ORT's memory-pattern planner. Off: from the second Run on it asks the arena for one block of the planned
    /// peak, which the regions of the first Run cannot serve, so the arena grows by the whole peak again
    /// (microsoft/onnxruntime#12070); ORT's own training sessions turned it off too.
    /// </summary>
    public bool MemoryPattern { get; init; }
    /// <summary>The arena's growth: 1 kSameAsRequested (a region of the size asked), 0 kNextPowerOfTwo (doubling regions).</summary>
    public int ArenaExtendStrategy { get; init; } = 1;
    /// <summary>The arena's first region in bytes (-1: ORT's default).</summary>
    public int InitialChunkBytes { get; init; } = -1;
    /// <summary>Most bytes a chunk may waste on a smaller request before the arena splits it (-1: ORT's default, 128 MiB).</summary>
    public int MaxDeadBytesPerChunk { get; init; } = -1;
    /// <summary>One CPU arena per process for the training sessions (configurable; the per-session one is not).</summary>
    public bool SharedCpuArena { get; init; } = true;
    /// <summary>Return the arena's unused regions to the system at the end of every Run (run option; see <see cref="DeviceSpec.ConfigureRunOptions"/>).</summary>
    public bool ArenaShrinkage { get; init; }

    public static MemorySettings Current { get; set; } = FromEnvironment(new MemorySettings());

    public static MemorySettings FromEnvironment(MemorySettings d)
    {
        static string? Env(string name) => Environment.GetEnvironmentVariable("ORTFINETUNE_" + name);
        static bool Flag(string name, bool dflt) => Env(name) switch { "0" or "false" => false, "1" or "true" => true, _ => dflt };
        static int Int(string name, int dflt) => int.TryParse(Env(name), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : dflt;
        return d with
        {
            MemoryPattern = Flag("MEMORY_PATTERN", d.MemoryPattern),
            ArenaExtendStrategy = Int("ARENA_EXTEND", d.ArenaExtendStrategy),
            InitialChunkBytes = Int("ARENA_INITIAL_CHUNK", d.InitialChunkBytes),
            MaxDeadBytesPerChunk = Int("ARENA_MAX_DEAD_BYTES", d.MaxDeadBytesPerChunk),
            SharedCpuArena = Flag("CPU_SHARED_ARENA", d.SharedCpuArena),
            ArenaShrinkage = Flag("ARENA_SHRINKAGE", d.ArenaShrinkage),
        };
    }

    public override string ToString() => FormattableString.Invariant(
        $"memory pattern {(MemoryPattern ? "on" : "off")}, arena {(ArenaExtendStrategy == 1 ? "kSameAsRequested" : "kNextPowerOfTwo")}, initial chunk {InitialChunkBytes}, max dead bytes {MaxDeadBytesPerChunk}, shared CPU arena {(SharedCpuArena ? "on" : "off")}, shrinkage {(ArenaShrinkage ? "on" : "off")}");
}

/// <summary>A training run cannot go on; the message says what and why.</summary>
public sealed class TrainingException : Exception
{
    public TrainingException(string message, Exception? inner = null) : base(message, inner) { }
}
