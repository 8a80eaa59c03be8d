using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Plugins.Precision;

namespace OrtFinetune.Plugins.Precision.Tests;

public class PolicyTests
{
    sealed class Services : List<ServiceDescriptor>, IServiceCollection;

    static IReadOnlyList<IPrecisionPolicy> Registered()
    {
        var s = new Services();
        new PrecisionPlugin().Configure(s);
        Assert.All(s, d => Assert.Equal(ServiceLifetime.Singleton, d.Lifetime));
        return s.Select(d => (IPrecisionPolicy)d.ImplementationInstance!).ToList();
    }

    [Theory]
    [InlineData("32", "32-true"), InlineData("32-true", "32-true"), InlineData("16", "16-mixed"), InlineData("16-mixed", "16-mixed")]
    [InlineData("bf16", "bf16-mixed"), InlineData("BF16-Mixed", "bf16-mixed"), InlineData("16-true", "16-true"), InlineData("bf16-true", "bf16-true")]
    [InlineData("64", "64-true"), InlineData(" half ", "16-true")]
    public void NamesAndAliasesResolveInOnePlace(string name, string expected) =>
        Assert.Equal(expected, PrecisionNames.Resolve(Registered(), name).Name);

    [Fact]
    public void AutoPicksByDevice()
    {
        Assert.Equal("32-true", PrecisionNames.Resolve(Registered(), "auto").Name);
        Assert.Equal("16-mixed", PrecisionNames.Resolve(Registered(), "auto", cuda: true).Name);
        Assert.Equal("bf16-mixed", PrecisionNames.Resolve(Registered(), "auto", cuda: true, cudaBf16: true).Name);
    }

    [Fact]
    public void AnUnknownNameIsAnErrorThatQuotesIt()
    {
        var e = Assert.Throws<PrecisionException>(() => PrecisionNames.Resolve(Registered(), "fp8-mixed"));
        Assert.Contains("'fp8-mixed'", e.Message);
        Assert.Contains("bf16-true", e.Message);
    }

    [Fact]
    public void InvalidCombinationsAreRefusedAtConstruction()
    {
        Assert.Throws<PrecisionException>(() => new MixedPrecision(DataType.BFloat16, new LossScalerSettings()));
        Assert.Throws<PrecisionException>(() => new HalfPrecision(DataType.BFloat16, new LossScalerSettings()));
        Assert.Throws<PrecisionException>(() => new MixedPrecision(DataType.Float));
        var reg = Registered();
        foreach (var bf16 in new[] { "bf16-mixed", "bf16-true" })
            Assert.StartsWith($"{bf16} does not use a loss scaler", Assert.Throws<PrecisionException>(() => PrecisionNames.Resolve(reg, bf16).WithOptions(new PrecisionOptions { LossScaling = true })).Message);
        Assert.Throws<PrecisionException>(() => PrecisionNames.Resolve(reg, "32").WithOptions(new PrecisionOptions { Rounding = UpdateRounding.Kahan }));
        Assert.Throws<PrecisionException>(() => PrecisionNames.Resolve(reg, "16-mixed").WithOptions(new PrecisionOptions { Rounding = UpdateRounding.Kahan }));
        Assert.Throws<PrecisionException>(() => new MixedPrecision(DataType.Float16, new LossScalerSettings { BackoffFactor = 2 }));
    }

    [Fact]
    public void DefaultsFollowTheReference()
    {
        var reg = Registered();
        var m16 = PrecisionNames.Resolve(reg, "16-mixed");
        Assert.Equal((DataType.Float16, DataType.Float), (m16.ComputeType, m16.StorageType));
        Assert.Equal(65536, m16.LossScaling!.InitScale);
        Assert.Equal(2000, m16.LossScaling.GrowthInterval);
        Assert.Null(PrecisionNames.Resolve(reg, "bf16-mixed").LossScaling);
        Assert.Null(PrecisionNames.Resolve(reg, "16-true").LossScaling);
        Assert.Equal(DataType.BFloat16, PrecisionNames.Resolve(reg, "bf16-true").StorageType);
        var custom = PrecisionNames.Resolve(reg, "16-true").WithOptions(new PrecisionOptions { LossScaling = true, Rounding = UpdateRounding.Kahan });
        Assert.Equal(("16-true", UpdateRounding.Kahan), (custom.Name, custom.Rounding));
        Assert.NotNull(custom.LossScaling);
        Assert.Null(PrecisionNames.Resolve(reg, "16-mixed").WithOptions(new PrecisionOptions { LossScaling = false }).LossScaling);
    }
}
