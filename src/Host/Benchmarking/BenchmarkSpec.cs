using System.Text.Json;
using System.Text.Json.Serialization;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>
/// What one benchmark measures. The parent process writes one per precision policy (with
/// <see cref="Precision"/> set) to a file and runs the hidden child verb on it, so that peak RSS is per policy.
/// </summary>
public sealed record BenchmarkSpec
{
    public string Model { get; init; } = "vit-tiny";
    /// <summary>"synthetic" (random images and labels generated in memory) or a dataset plugin's name.</summary>
    public string Dataset { get; init; } = "synthetic";
    public string? DataDir { get; init; }
    public int Limit { get; init; }
    public int BatchSize { get; init; } = 8;
    public string[] Precisions { get; init; } = ["32-true"];
    /// <summary>The one policy a child process runs.</summary>
    public string Precision { get; init; } = "32-true";
    public int Warmup { get; init; } = 2;
    public int Steps { get; init; } = 10;
    /// <summary>Full training epochs with evaluation after the timed steps (needs a real dataset); 0 = none.</summary>
    public int Epochs { get; init; }
    public int ImageSize { get; init; }
    /// <summary>Classes of the synthetic dataset (1000 = ImageNet's, as the PyTorch peer's torchvision models).</summary>
    public int Classes { get; init; } = 1000;
    public string Device { get; init; } = "cpu";
    public int Threads { get; init; }
    public bool CpuArena { get; init; }
    /// <summary>Mixed policies keep 16-bit activations on a provider without 16-bit matrix kernels (train's --low-precision-activations).</summary>
    public bool LowPrecisionActivations { get; init; }
    public double Lr { get; init; } = 1e-4;
    public double WeightDecay { get; init; } = 0.05;
    public string Optimizer { get; init; } = "adamw";
    public double? MaxGradNorm { get; init; }
    public int Seed { get; init; } = 42;
    /// <summary>Initial weights (safetensors, e.g. the PyTorch peer's, exported with --export-weights); null = the model's own init.</summary>
    public string? Weights { get; init; }
    public int Workers { get; init; } = 2;
    public bool Profile { get; init; }
    public bool MeasurePeak { get; init; } = true;
    public string[] PluginFolders { get; init; } = [];
    public string Output { get; init; } = "benchmark";

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}

/// <summary>What one policy measured (written by the child, read by the parent).</summary>
public sealed record PolicyResult
{
    public string Precision { get; init; } = "";
    public string? Error { get; set; }
    public string Device { get; set; } = "cpu";
    public long Parameters { get; set; }
    public long PersistentStateBytes { get; set; }
    public double SetupSeconds { get; set; }
    public List<double> WarmupSeconds { get; set; } = new();
    public List<double> StepSeconds { get; set; } = new();
    public double MedianSeconds { get; set; }
    public double P10Seconds { get; set; }
    public double P90Seconds { get; set; }
    public double SamplesPerSecond { get; set; }
    /// <summary>Peak resident set size of the child process (VmHWM), bytes.</summary>
    public long PeakRssBytes { get; set; }
    /// <summary>Peak device memory on CUDA (NVML, used memory above the level before the run), bytes; null on the CPU.</summary>
    public long? PeakDeviceBytes { get; set; }
    public string? DeviceMemoryNote { get; set; }
    /// <summary>The training sessions' memory settings (<see cref="OrtFinetune.Training.Runtime.MemorySettings"/>) and whether the CPU arena was on.</summary>
    public string? MemorySettings { get; set; }
    /// <summary>The memory model's prediction of the peak (Training.Compiler.Scheduling.MemoryModel), bytes, and its parts.</summary>
    public long? PredictedPeakBytes { get; set; }
    public long? PredictedActivationBytes { get; set; }
    public string? PredictedSummary { get; set; }
    /// <summary>Analytic FLOPs of one step (MatMul/Gemm/Conv/ConvTranspose of the training graph).</summary>
    public double FlopsPerStep { get; set; }
    public int TrainingNodes { get; set; }
    /// <summary>MatMul/Gemm/Conv/ConvTranspose nodes of the training graph, and how many of them run in 16-bit.</summary>
    [JsonPropertyName("matmul_nodes")] public int MatMulNodes { get; set; }
    [JsonPropertyName("matmul_nodes_16bit")] public int MatMulNodes16Bit { get; set; }
    /// <summary>The element type most of the step's matrix-product FLOPs run in: "float32", "float16" or "bfloat16".</summary>
    public string MatMulType { get; set; } = "float32";
    public double AchievedGflops { get; set; }
    public double? PeakMatMulGflops { get; set; }
    public double? FractionOfPeak { get; set; }
    public List<float> StepLosses { get; set; } = new();
    /// <summary>Per optimizer step during epochs (when run).</summary>
    public List<float> EpochLosses { get; set; } = new();
    public List<double> ValAccuracy { get; set; } = new();
    public double? TestAccuracy { get; set; }
    public double? TestLoss { get; set; }
    public long SkippedSteps { get; set; }
    public Dictionary<string, double>? ProfileByOpType { get; set; }
    public Dictionary<string, long>? ProfileCalls { get; set; }
    /// <summary>Sum of whole Run calls (both graphs) over the profiled steps, µs.</summary>
    public double? ProfileRunMicroseconds { get; set; }
}
