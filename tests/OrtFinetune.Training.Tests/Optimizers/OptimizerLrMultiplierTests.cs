using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Optimizers;

/// <summary>
/// Per-parameter learning-rate multipliers (OptimizerOptions.LrMultipliers, what --layer-decay feeds): every
/// parameter moves as with learning_rate x its multiplier, in the per-parameter layout, the default buckets
/// and buckets small enough to split a group; each bucket has one multiplier, recorded in its metadata.
/// </summary>
public class OptimizerLrMultiplierTests(ITestOutputHelper log)
{
    public static TheoryData<long> Layouts => new() { 0, OptimizerBuilder.DefaultBucketBytes, 64 };

    internal static List<Tensor> Parameters(int seed = 5)
    {
        var rng = new Random(seed);
        Tensor T(string name, params long[] dims) =>
            Tensor.Float(name, Enumerable.Range(0, (int)dims.Aggregate(1L, (a, b) => a * b)).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), dims);
        return [T("embed.weight", 4, 6), T("embed.bias", 6), T("block0.weight", 6, 6), T("block0.bias", 6), T("block1.weight", 6, 5), T("block1.bias", 5), T("head.weight", 3, 5), T("head.bias", 3)];
    }

    internal static Dictionary<string, float[]> Gradients(IEnumerable<Tensor> parameters, int seed)
    {
        var rng = new Random(seed);
        return parameters.ToDictionary(p => p.Name, p => Enumerable.Range(0, (int)p.ElementCount).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray());
    }

    /// <summary>Layer-decay-like multipliers (0.75^(3 - layer)); the head is left out of the dictionary (so 1).</summary>
    internal static readonly Dictionary<string, double> Multipliers = new()
    {
        ["embed.weight"] = 0.421875, ["embed.bias"] = 0.421875, ["block0.weight"] = 0.5625, ["block0.bias"] = 0.5625,
        ["block1.weight"] = 0.75, ["block1.bias"] = 0.75,
    };

    static double M(string name) => Multipliers.GetValueOrDefault(name, 1.0);

    [Theory, MemberData(nameof(Layouts))]
    public void SgdStepIsTheGradientTimesTheScaledLearningRate(long bucketBytes)
    {
        var ps = Parameters();
        var o = new OptimizerOptions { Type = "sgd", Momentum = 0, WeightDecay = 0, BucketBytes = bucketBytes, LrMultipliers = Multipliers };
        using var h = new OptimizerHarness(OptimizerBuilder.Build(ps, o), ps, o);
        var g = Gradients(ps, 1);
        const float lr = 0.05f;
        h.Step(g, lr, 1);
        foreach (var p in ps)
        {
            // torch: group lr = lr * lr_scale in float64, p.add_(grad, alpha=-group_lr) with alpha rounded to float32.
            float lrEff = (float)((double)lr * M(p.Name));
            var before = p.ToFloats();
            var expected = before.Select((x, i) => x - g[p.Name][i] * lrEff).ToArray();
            Assert.Equal(expected, h.Get(p.Name));
        }
        if (bucketBytes > 0)
            foreach (var b in h.Buckets)
                Assert.All(b.Members, m => Assert.Equal(M(m.Param), b.LrMultiplier));
        log.WriteLine($"{(bucketBytes == 0 ? "per-parameter" : $"{h.Buckets.Count} buckets")}: every parameter moved by exactly lr x multiplier x gradient");
    }

    [Theory, MemberData(nameof(Layouts))]
    public void AdamWScalesStepSizeAndDecoupledDecayByTheMultiplier(long bucketBytes)
    {
        var ps = Parameters();
        const double wd = 0.5, b1 = 0.9, b2 = 0.999, eps = 1e-8;
        var o = new OptimizerOptions { Type = "adamw", WeightDecay = wd, BucketBytes = bucketBytes, LrMultipliers = Multipliers, SkipNonFiniteUpdates = false };
        using var h = new OptimizerHarness(OptimizerBuilder.Build(ps, o), ps, o);
        // torch.optim.AdamW per parameter, in float64, with the group's lr = lr * multiplier.
        var p = ps.ToDictionary(x => x.Name, x => x.ToFloats().Select(v => (double)v).ToArray());
        var m = ps.ToDictionary(x => x.Name, x => new double[x.ElementCount]);
        var v = ps.ToDictionary(x => x.Name, x => new double[x.ElementCount]);
        double worst = 0;
        for (int t = 1; t <= 3; t++)
        {
            var g = Gradients(ps, 10 + t);
            float lr = 0.01f * t;
            h.Step(g, lr, t);
            foreach (var x in ps)
            {
                double lrEff = lr * M(x.Name), bc1 = 1 - Math.Pow(b1, t), bc2 = Math.Sqrt(1 - Math.Pow(b2, t));
                bool decays = x.Dims.Length >= 2;
                for (int i = 0; i < x.ElementCount; i++)
                {
                    m[x.Name][i] = b1 * m[x.Name][i] + (1 - b1) * g[x.Name][i];
                    v[x.Name][i] = b2 * v[x.Name][i] + (1 - b2) * g[x.Name][i] * g[x.Name][i];
                    if (decays) p[x.Name][i] *= 1 - lrEff * wd;
                    p[x.Name][i] -= lrEff / bc1 * m[x.Name][i] / (Math.Sqrt(v[x.Name][i]) / bc2 + eps);
                }
                var e = RelErr(h.Get(x.Name), p[x.Name]);
                worst = Math.Max(worst, e);
                Assert.True(e <= 1e-5, $"step {t}: '{x.Name}' (multiplier {M(x.Name)}) relative error {e:E2}");
            }
        }
        log.WriteLine($"AdamW, 3 steps: worst relative error {worst:E2}");
    }

    [Fact]
    public void EachBucketHasOneMultiplierAndItsMetadataSaysWhich()
    {
        var ps = Parameters();
        var o = new OptimizerOptions { Type = "adamw", LrMultipliers = Multipliers };
        var model = OptimizerBuilder.Build(ps, o);
        var buckets = OptimizerBucket.Read(model);
        // (decay, no decay) x (0.421875, 0.5625, 0.75, 1): 8 groups, each a bucket of its own at the default size.
        Assert.Equal(8, buckets.Count);
        Assert.Equal(buckets.Count, buckets.Select(b => (b.Decays, b.LrMultiplier)).Distinct().Count());
        foreach (var b in buckets) Assert.All(b.Members, m => Assert.Equal(M(m.Param), b.LrMultiplier));
        Assert.Contains("\"lr_multiplier\":0.5625", model.Metadata[OptimizerBucket.MetadataKey]);
        Assert.All(buckets, b => Assert.False(b.Body));

        // Metadata written before multipliers existed reads as 1 (and not body).
        var old = OptimizerBuilder.Build(ps, new OptimizerOptions { Type = "adamw" });
        var text = old.Metadata[OptimizerBucket.MetadataKey];
        old.Metadata[OptimizerBucket.MetadataKey] = System.Text.RegularExpressions.Regex.Replace(text, ",\"lr_multiplier\":[^,}]*,\"body\":(true|false)", "");
        Assert.DoesNotContain("lr_multiplier", old.Metadata[OptimizerBucket.MetadataKey]);
        Assert.All(OptimizerBucket.Read(old), b => { Assert.Equal(1.0, b.LrMultiplier); Assert.False(b.Body); });
    }

    [Fact]
    public void UnitMultipliersBuildTheSameGraphAsNone()
    {
        var ps = Parameters();
        var plain = OptimizerBuilder.Build(ps, new OptimizerOptions { Type = "adamw" });
        var ones = OptimizerBuilder.Build(ps, new OptimizerOptions { Type = "adamw", LrMultipliers = ps.ToDictionary(p => p.Name, _ => 1.0) });
        Assert.Equal(ModelIO.ToBytes(plain), ModelIO.ToBytes(ones));
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-0.5)]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void ABadMultiplierIsRefusedByName(double bad)
    {
        var e = Assert.Throws<CompileException>(() => OptimizerBuilder.Build(Parameters(), new OptimizerOptions { LrMultipliers = new Dictionary<string, double> { ["block0.bias"] = bad } }));
        Assert.Contains("'block0.bias'", e.Message);
    }
}
