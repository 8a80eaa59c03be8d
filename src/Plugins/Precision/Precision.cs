using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Precision;

/// <summary>
/// The base policy is the 32-bit one ("32-true"): fp32 everywhere, every hook does nothing.
/// Other policies override only what they change.
/// </summary>
public class Precision : IPrecisionPolicy
{
    public virtual string Name => "32-true";
    public virtual IReadOnlyList<string> Aliases => ["32", "fp32", "float32"];
    public virtual string Description => "fp32 parameters, gradients, optimizer state and compute";
    public virtual DataType ComputeType => DataType.Float;
    public virtual DataType StorageType => DataType.Float;
    public virtual LossScalerSettings? LossScaling => null;
    public virtual UpdateRounding Rounding => UpdateRounding.Nearest;

    public virtual void ConvertForward(Model forward, IPrecisionPasses passes) { }

    public virtual IPrecisionPolicy WithOptions(PrecisionOptions options)
    {
        if (options.LossScaling == true) throw new PrecisionException($"precision '{Name}' does not use loss scaling (it has no 16-bit gradients to protect)");
        if (options.Rounding != UpdateRounding.Nearest) throw new PrecisionException($"precision '{Name}' stores fp32 parameters; update rounding '{options.Rounding}' applies to the true 16-bit policies only");
        return this;
    }

    public override string ToString() => Name;

    protected static string DtypeName(DataType t) => t == DataType.BFloat16 ? "bf16" : t == DataType.Float16 ? "16" : t.OnnxName();

    /// <summary>The one refusal of a loss scaler with bfloat16 (16-bit policies call it when they are built).</summary>
    protected static void RefuseBf16Scaler(string policy, DataType t, LossScalerSettings? scaler)
    {
        if (t == DataType.BFloat16 && scaler != null)
            throw new PrecisionException($"{policy} does not use a loss scaler: bfloat16 has fp32's exponent range, so gradients do not underflow");
    }
}

/// <summary>
/// "16-mixed" and "bf16-mixed": fp32 master weights, optimizer state and gradients; the forward graph is
/// autocast (compute-bound ops in 16-bit, sensitive ops in fp32). fp16 uses dynamic loss scaling; bf16
/// has fp32's exponent range and refuses a scaler.
/// </summary>
public sealed class MixedPrecision : Precision
{
    readonly LossScalerSettings? _scaler;
    readonly AutocastLists _lists;

    public MixedPrecision(DataType low, LossScalerSettings? scaler = null, AutocastLists? lists = null, bool defaultScaler = true)
    {
        if (low is not (DataType.Float16 or DataType.BFloat16)) throw new PrecisionException($"mixed precision needs float16 or bfloat16, not {low.OnnxName()}");
        RefuseBf16Scaler(DtypeName(low) + "-mixed", low, scaler);
        ComputeType = low;
        _scaler = scaler ?? (low == DataType.Float16 && defaultScaler ? new LossScalerSettings() : null);
        _scaler?.Validate();
        _lists = lists ?? new AutocastLists();
    }

    public override string Name => DtypeName(ComputeType) + "-mixed";
    public override IReadOnlyList<string> Aliases => ComputeType == DataType.Float16 ? ["16", "fp16-mixed", "amp"] : ["bf16", "bfloat16-mixed"];
    public override string Description => $"fp32 master weights, {ComputeType.OnnxName()} autocast compute" + (_scaler != null ? ", dynamic loss scaling" : "");
    public override DataType ComputeType { get; }
    public override LossScalerSettings? LossScaling => _scaler;
    public AutocastLists Lists => _lists;

    public override void ConvertForward(Model forward, IPrecisionPasses passes) => passes.Autocast(forward, ComputeType, _lists);

    public override IPrecisionPolicy WithOptions(PrecisionOptions o)
    {
        if (o.Rounding != UpdateRounding.Nearest) throw new PrecisionException($"precision '{Name}' keeps fp32 master weights; update rounding '{o.Rounding}' applies to the true 16-bit policies only");
        bool scale = o.LossScaling ?? ComputeType == DataType.Float16;
        return new MixedPrecision(ComputeType, scale ? o.Scaler : null, o.Lists ?? _lists, defaultScaler: false);
    }
}

/// <summary>
/// "16-true" and "bf16-true": parameters, gradients and optimizer state stored in 16-bit; inputs cast at
/// entry, outputs (logits) cast back to fp32 so the loss is computed in fp32. Beyond the reference:
/// optional loss scaling for fp16 and Kahan-compensated updates.
/// </summary>
public sealed class HalfPrecision : Precision
{
    public HalfPrecision(DataType t, LossScalerSettings? scaler = null, UpdateRounding rounding = UpdateRounding.Nearest)
    {
        if (t is not (DataType.Float16 or DataType.BFloat16)) throw new PrecisionException($"true half precision needs float16 or bfloat16, not {t.OnnxName()}");
        RefuseBf16Scaler(DtypeName(t) + "-true", t, scaler);
        scaler?.Validate();
        StorageType = t; LossScaling = scaler; Rounding = rounding;
    }

    public override string Name => DtypeName(StorageType) + "-true";
    public override IReadOnlyList<string> Aliases => StorageType == DataType.Float16 ? ["fp16-true", "half"] : ["bfloat16-true"];
    public override string Description => $"{StorageType.OnnxName()} parameters, gradients, optimizer state and compute"
        + (LossScaling != null ? ", dynamic loss scaling" : "") + (Rounding == UpdateRounding.Kahan ? ", Kahan-compensated updates" : "");
    public override DataType ComputeType => StorageType;
    public override DataType StorageType { get; }
    public override LossScalerSettings? LossScaling { get; }
    public override UpdateRounding Rounding { get; }

    public override void ConvertForward(Model forward, IPrecisionPasses passes) => passes.ConvertTo(forward, StorageType);

    public override IPrecisionPolicy WithOptions(PrecisionOptions o) =>
        new HalfPrecision(StorageType, o.LossScaling == true ? o.Scaler : null, o.Rounding);
}

/// <summary>"64-true": everything in float64 (for numerical checks; the CPU has double kernels for most ops).</summary>
public sealed class DoublePrecision : Precision
{
    public override string Name => "64-true";
    public override IReadOnlyList<string> Aliases => ["64", "fp64", "double"];
    public override string Description => "float64 parameters, gradients, optimizer state and compute";
    public override DataType ComputeType => DataType.Double;
    public override DataType StorageType => DataType.Double;
    public override void ConvertForward(Model forward, IPrecisionPasses passes) => passes.ConvertTo(forward, DataType.Double);
}
