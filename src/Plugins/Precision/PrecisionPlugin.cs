using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Precision;

/// <summary>Registers the precision policies: 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true.</summary>
public sealed class PrecisionPlugin : IPlugin
{
    public string Name => "Precision";

    /// <summary>All policies with their default settings, in the order they are listed to users.</summary>
    public static IReadOnlyList<IPrecisionPolicy> Policies() =>
    [
        new Precision(),
        new MixedPrecision(DataType.Float16),
        new MixedPrecision(DataType.BFloat16),
        new HalfPrecision(DataType.Float16),
        new HalfPrecision(DataType.BFloat16),
        new DoublePrecision(),
    ];

    public void Configure(IServiceCollection services)
    {
        foreach (var p in Policies()) services.AddSingleton<IPrecisionPolicy>(p);
    }
}
