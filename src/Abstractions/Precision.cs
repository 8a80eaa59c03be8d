using OrtFinetune.Onnx;

namespace OrtFinetune.Abstractions;

/// <summary>
/// Dynamic loss scaling with torch.amp.GradScaler's semantics: the loss is multiplied by the scale
/// before backward; a step whose gradients are not all finite is skipped and the scale multiplied by
/// <see cref="BackoffFactor"/>; after <see cref="GrowthInterval"/> consecutive finite steps it is
/// multiplied by <see cref="GrowthFactor"/>. A scale that would fall below <see cref="MinScale"/> stops
/// the run (every step overflowing means the model produces inf/NaN, not that the scale is too big).
/// </summary>
public sealed record LossScalerSettings
{
    /// <summary>The scale of the first step (GradScaler's init_scale, 2^16).</summary>
    public double InitScale { get; init; } = 65536.0;
    /// <summary>Multiplier after <see cref="GrowthInterval"/> finite steps in a row (&gt; 1).</summary>
    public double GrowthFactor { get; init; } = 2.0;
    /// <summary>Multiplier after a step with a non-finite gradient, which is skipped (in (0, 1)).</summary>
    public double BackoffFactor { get; init; } = 0.5;
    /// <summary>Finite steps in a row before the scale grows.</summary>
    public int GrowthInterval { get; init; } = 2000;
    /// <summary>Smallest scale before the run is stopped; default 2^-24 (fp16's smallest subnormal).</summary>
    public double MinScale { get; init; } = 1.0 / (1 << 24);
    /// <summary>Largest scale; growth stops there (fp32 holds up to ~3.4e38; 2^24 keeps scaled fp16 gradients sane).</summary>
    public double MaxScale { get; init; } = 1 << 24;

    /// <summary>Throws <see cref="PrecisionException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (!(InitScale > 0) || double.IsInfinity(InitScale)) throw new PrecisionException($"loss scale {InitScale} must be a positive finite number");
        if (!(GrowthFactor > 1)) throw new PrecisionException($"loss-scale growth factor {GrowthFactor} must be > 1");
        if (!(BackoffFactor is > 0 and < 1)) throw new PrecisionException($"loss-scale backoff factor {BackoffFactor} must be in (0, 1)");
        if (GrowthInterval < 1) throw new PrecisionException($"loss-scale growth interval {GrowthInterval} must be >= 1");
        if (!(MinScale > 0) || MinScale > InitScale) throw new PrecisionException($"minimum loss scale {MinScale} must be > 0 and <= the initial scale {InitScale}");
        if (MaxScale < InitScale) throw new PrecisionException($"maximum loss scale {MaxScale} must be >= the initial scale {InitScale}");
    }
}

/// <summary>How a 16-bit parameter receives its update.</summary>
public enum UpdateRounding
{
    /// <summary>The update is computed in fp32 and the new value rounded to nearest (the reference behaviour).</summary>
    Nearest,
    /// <summary>
    /// Kahan-compensated: a 16-bit buffer per parameter keeps the rounding error of the last store and
    /// adds it back at the next update, so small updates are not lost to rounding.
    /// </summary>
    Kahan,
}

/// <summary>Which ops autocast runs in 16-bit and which in fp32; everything else runs in its widest input dtype.</summary>
public sealed record AutocastLists
{
    /// <summary>Compute-bound ops that run in 16-bit (PyTorch autocast's lower_precision_fp list, mapped to ONNX).</summary>
    public IReadOnlySet<string> LowPrecision { get; init; } = DefaultLow;
    /// <summary>Numerically sensitive ops kept in fp32 (PyTorch autocast's fp32 list, mapped to ONNX).</summary>
    public IReadOnlySet<string> FullPrecision { get; init; } = DefaultFull;

    /// <summary>The default <see cref="LowPrecision"/> list.</summary>
    public static readonly IReadOnlySet<string> DefaultLow = new HashSet<string>
    {
        "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "PRelu", "MatMulInteger", "Attention",
    };

    /// <summary>The default <see cref="FullPrecision"/> list.</summary>
    public static readonly IReadOnlySet<string> DefaultFull = new HashSet<string>
    {
        "Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization", "GroupNormalization", "InstanceNormalization",
        "LpNormalization", "MeanVarianceNormalization",
        "ReduceSum", "ReduceMean", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp", "ReduceL1", "ReduceL2", "ReduceSumSquare",
        "CumSum", "Exp", "Log", "Pow", "Reciprocal", "Sqrt", "Acos", "Asin", "Cosh", "Sinh", "Tan", "Softplus",
        "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss", "Resize", "Upsample",
    };

    /// <summary>These lists with ops added to or removed from either list.</summary>
    public AutocastLists With(IEnumerable<string>? addLow = null, IEnumerable<string>? addFull = null, IEnumerable<string>? remove = null)
    {
        var low = new HashSet<string>(LowPrecision); var full = new HashSet<string>(FullPrecision);
        foreach (var op in addLow ?? []) { low.Add(op); full.Remove(op); }
        foreach (var op in addFull ?? []) { full.Add(op); low.Remove(op); }
        foreach (var op in remove ?? []) { low.Remove(op); full.Remove(op); }
        return new AutocastLists { LowPrecision = low, FullPrecision = full };
    }
}

/// <summary>User choices that refine a policy (command-line flags); validated when the policy is built.</summary>
public sealed record PrecisionOptions
{
    /// <summary>Dynamic loss scaling: null = the policy's default (on for 16-mixed, off otherwise).</summary>
    public bool? LossScaling { get; init; }
    /// <summary>Scaler settings used when loss scaling is on.</summary>
    public LossScalerSettings Scaler { get; init; } = new();
    /// <summary>Update rounding for 16-bit parameters (true policies only).</summary>
    public UpdateRounding Rounding { get; init; } = UpdateRounding.Nearest;
    /// <summary>Autocast lists (mixed policies only); null = the defaults.</summary>
    public AutocastLists? Lists { get; init; }
}

/// <summary>
/// The graph rewrites a policy may ask for, implemented by the training compiler (the policy only
/// chooses; the mechanism is general). Each works in place on a forward model before autodiff.
/// </summary>
public interface IPrecisionPasses
{
    /// <summary>
    /// Mixed precision: fp32 parameters stay fp32 (cast at use); ops in the low list compute in
    /// <paramref name="low"/>, ops in the full list in fp32, others in their widest activation dtype; an op
    /// without a <paramref name="low"/> kernel on the provider stays fp32. Model outputs keep their dtype.
    /// </summary>
    void Autocast(Model forward, DataType low, AutocastLists lists);

    /// <summary>
    /// True precision: float initializers become <paramref name="storage"/>, float inputs are cast to it at
    /// entry, float outputs cast back to their original dtype (so the loss is computed in fp32).
    /// </summary>
    void ConvertTo(Model forward, DataType storage);
}

/// <summary>
/// A precision policy (Lightning Fabric's precision plugins): what dtype parameters, gradients and
/// optimizer state are stored in, what the forward graph is rewritten to before autodiff, and whether
/// dynamic loss scaling is used. Registered by plugins as singletons; chosen by name with
/// <see cref="PrecisionNames.Resolve"/>.
/// </summary>
public interface IPrecisionPolicy
{
    /// <summary>Canonical name, e.g. "16-mixed".</summary>
    string Name { get; }
    /// <summary>Other names accepted for it, e.g. "16".</summary>
    IReadOnlyList<string> Aliases { get; }
    /// <summary>One line for <c>ortfinetune plugins</c> and the run's precision report.</summary>
    string Description { get; }
    /// <summary>The dtype the compute-bound ops run in.</summary>
    DataType ComputeType { get; }
    /// <summary>The dtype of parameters, gradients and optimizer state.</summary>
    DataType StorageType { get; }
    /// <summary>Dynamic loss scaling settings, or null when the policy does not scale the loss.</summary>
    LossScalerSettings? LossScaling { get; }
    /// <summary>How 16-bit parameters receive their updates (<see cref="UpdateRounding.Nearest"/> for fp32 storage).</summary>
    UpdateRounding Rounding { get; }

    /// <summary>Rewrites the forward model before autodiff (default: nothing).</summary>
    void ConvertForward(Model forward, IPrecisionPasses passes);

    /// <summary>
    /// A policy of the same kind refined by <paramref name="options"/>; throws <see cref="PrecisionException"/>
    /// for a combination the policy cannot honour (e.g. a loss scaler with bf16).
    /// </summary>
    IPrecisionPolicy WithOptions(PrecisionOptions options);
}

/// <summary>The one place precision names are parsed.</summary>
public static class PrecisionNames
{
    /// <summary>The name that picks a policy from the device (see <see cref="Resolve"/>).</summary>
    public const string Auto = "auto";

    /// <summary>
    /// The policy called <paramref name="name"/> (canonical name or alias, case-insensitive). "auto" picks
    /// bf16-mixed on a CUDA device with bf16 support (<paramref name="cudaBf16"/>: the host reads it from the
    /// device, compute capability 8.0 and newer), 16-mixed on other CUDA devices, 32-true on the CPU.
    /// </summary>
    public static IPrecisionPolicy Resolve(IEnumerable<IPrecisionPolicy> policies, string name, bool cuda = false, bool cudaBf16 = false)
    {
        var list = policies.ToList();
        var wanted = name.Trim().ToLowerInvariant();
        if (wanted == Auto) wanted = !cuda ? "32-true" : cudaBf16 ? "bf16-mixed" : "16-mixed";
        var hits = list.Where(p => p.Name.Equals(wanted, StringComparison.OrdinalIgnoreCase)
                                   || p.Aliases.Any(a => a.Equals(wanted, StringComparison.OrdinalIgnoreCase))).ToList();
        if (hits.Count == 1) return hits[0];
        if (hits.Count > 1) throw new PrecisionException($"precision '{name}' is ambiguous: {string.Join(", ", hits.Select(p => p.Name))} all claim it");
        var known = list.SelectMany(p => new[] { p.Name }.Concat(p.Aliases)).Append(Auto);
        throw new PrecisionException($"precision '{name}' is not known (choose one of: {string.Join(", ", known)})");
    }
}

/// <summary>A precision setting is unknown or an invalid combination; the message says which.</summary>
public class PrecisionException : Exception
{
    /// <summary>An error whose <paramref name="message"/> names the setting or combination.</summary>
    public PrecisionException(string message, Exception? inner = null) : base(message, inner) { }
}
