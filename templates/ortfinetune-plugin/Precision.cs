using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace MyPlugin;

/// <summary>The plugin's entry point: the host creates it and lets it register its providers as singletons.</summary>
public sealed class PrecisionPlugin : IPlugin
{
    public string Name => "MyPlugin";
    public void Configure(IServiceCollection services) => services.AddSingleton<IPrecisionPolicy>(new GentleMixedPrecision());
}

/// <summary>
/// <c>--precision myplugin</c>: the built-in 16-mixed policy (fp32 master weights, gradients and optimizer state;
/// the forward graph autocast so that MatMul, Gemm, Conv, ... compute in fp16 and sensitive ops in fp32) with a
/// gentler dynamic loss scaler: it starts at 2^12 instead of 2^16 and grows after 500 finite steps instead of 2000,
/// so fewer of the first steps are skipped on overflow. The autocast lists are where to move ops between fp16 and
/// fp32 (<see cref="AutocastLists.With"/>). The graph rewrite itself is done by the host's compiler
/// (<see cref="IPrecisionPasses"/>); a policy only chooses.
/// </summary>
public sealed class GentleMixedPrecision : IPrecisionPolicy
{
    public static readonly LossScalerSettings GentleScaler = new() { InitScale = 4096, GrowthInterval = 500 };

    readonly AutocastLists _lists;

    public GentleMixedPrecision() : this(GentleScaler, new AutocastLists()) { }

    GentleMixedPrecision(LossScalerSettings? scaler, AutocastLists lists)
    {
        scaler?.Validate();
        LossScaling = scaler;
        _lists = lists;
    }

    public string Name => "myplugin";
    public IReadOnlyList<string> Aliases => [];
    public string Description => "16-mixed with a gentler loss scaler (fp32 master weights, fp16 autocast"
        + (LossScaling is { } s ? $", loss scale from {s.InitScale} growing every {s.GrowthInterval} steps)" : ", no loss scaling)");
    public DataType ComputeType => DataType.Float16;
    public DataType StorageType => DataType.Float;
    public LossScalerSettings? LossScaling { get; }
    public UpdateRounding Rounding => UpdateRounding.Nearest;

    public void ConvertForward(Model forward, IPrecisionPasses passes) => passes.Autocast(forward, DataType.Float16, _lists);

    public IPrecisionPolicy WithOptions(PrecisionOptions options)
    {
        if (options.Rounding != UpdateRounding.Nearest)
            throw new PrecisionException($"precision '{Name}' keeps fp32 master weights; update rounding '{options.Rounding}' applies to 16-bit storage only");
        bool scale = options.LossScaling ?? true;
        // Scaler settings left at the defaults mean "the policy's own".
        var scaler = options.Scaler == new LossScalerSettings() ? GentleScaler : options.Scaler;
        return new GentleMixedPrecision(scale ? scaler : null, options.Lists ?? _lists);
    }

    public override string ToString() => Name;
}
