using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Compiler.Precision;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Precision.Tests;

/// <summary>Short training runs per policy on the synthetic bars task (TinyModels), on the CPU with probed kernels.</summary>
public class PolicyTrainingTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-precision-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static IPrecisionPolicy Policy(string name) => PrecisionNames.Resolve(PrecisionPlugin.Policies(), name);

    static Trainer Build(IPrecisionPolicy policy, Model? forward = null, OptimizerOptions? optim = null, LossScalerSettings? scaler = null)
    {
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        var art = TrainingCompiler.Compile(forward ?? TinyModels.ConvNet(7), new CompileOptions { Precision = policy, Kernels = probe, GradientAccumulation = true });
        var o = (optim ?? new OptimizerOptions { Type = "adamw", WeightDecay = 0.01 }) with { Rounding = policy.Rounding };
        return new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, o, kernels: probe), art.Parameters, art.Buffers,
            new TrainerOptions { LossScaling = scaler ?? policy.LossScaling });
    }

    static (OrtValue X, OrtValue Y) Batch(float[] images, long[] labels, int start, int n)
    {
        int px = TinyModels.Size * TinyModels.Size;
        return (OrtValue.CreateTensorValueFromMemory(images.AsSpan(start * px, n * px).ToArray(), [n, 1, TinyModels.Size, TinyModels.Size]),
                OrtValue.CreateTensorValueFromMemory(labels.AsSpan(start, n).ToArray(), [n]));
    }

    /// <summary>One optimizer step (the trainer applies the policy's loss scaling, GradScaler's loop).</summary>
    static OptimizerStepResult Step(Trainer t, OrtValue x, OrtValue y)
    {
        t.LazyResetGrad();
        t.TrainStep([x], y);
        return t.OptimizerStep();
    }

    /// <summary>The bucketed optimizer (flat views per dtype group) updates 16-bit parameters exactly as the per-parameter one.</summary>
    [Theory]
    [InlineData("bf16-true")]
    [InlineData("16-true")]
    [InlineData("16-mixed")]
    public void BucketedOptimizerMatchesPerParameterOptimizer(string name)
    {
        var policy = Policy(name);
        using var a = Build(policy, optim: new OptimizerOptions { Type = "adamw", WeightDecay = 0.01, BucketBytes = 0 });
        using var b = Build(policy, optim: new OptimizerOptions { Type = "adamw", WeightDecay = 0.01, BucketBytes = 512 });
        var (images, labels) = TinyModels.Bars(64, 5);
        foreach (var t in new[] { a, b })
        {
            t.SetLearningRate(3e-3f);
            for (int i = 0; i < 4; i++)
            {
                var (x, y) = Batch(images, labels, i * 16, 16);
                Step(t, x, y);
            }
        }
        foreach (var n in a.ParameterNames)
            Assert.Equal(a.GetParameter(n).RawData.ToArray(), b.GetParameter(n).RawData.ToArray());
    }

    public static TheoryData<string, string, bool> Runs => new()
    {
        { "32-true", "", true }, { "16-mixed", "", true }, { "bf16-mixed", "", true }, { "16-true", "", true }, { "bf16-true", "", true },
        { "64-true", "", true }, { "16-true", "scaled", true }, { "bf16-true", "kahan", true }, { "16-true", "scaled+kahan", true },
    };

    [Theory, MemberData(nameof(Runs))]
    public void EveryPolicyLearnsTheBarsTask(string name, string variant, bool mustConverge)
    {
        var policy = Policy(name);
        if (variant.Length > 0)
            policy = policy.WithOptions(new PrecisionOptions { LossScaling = variant.Contains("scaled"), Rounding = variant.Contains("kahan") ? UpdateRounding.Kahan : UpdateRounding.Nearest });
        using var t = Build(policy);
        var (train, trainY) = TinyModels.Bars(2048, 1);
        var (test, testY) = TinyModels.Bars(512, 2);
        t.SetLearningRate(0.01f);
        var sw = Stopwatch.StartNew();
        int skipped = 0;
        for (int s = 0; s < 120; s++)
        {
            var (x, y) = Batch(train, trainY, (s * 32) % 2016, 32);
            using (x) using (y) if (!Step(t, x, y).AllFinite) skipped++;
        }
        var ms = sw.Elapsed.TotalMilliseconds / 120;
        double loss = 0, correct = 0;
        for (int i = 0; i < 512; i += 128)
        {
            var (x, y) = Batch(test, testY, i, 128);
            using (x) using (y) { var r = t.EvalStep([x], y); loss += r.Loss * 128; correct += r.Top1Correct; }
        }
        double acc = correct / 512;
        log.WriteLine($"{policy.Name}{(variant.Length > 0 ? " (" + variant + ")" : "")}: test accuracy {acc:P1}, loss {loss / 512:F3}, {t.Step} updates, {skipped} skipped, " +
                      $"scale {t.Scaler?.Scale.ToString() ?? "-"}, {ms:F1} ms/step, persistent {t.PersistentBytes / 1024.0:F1} KiB");
        Assert.Equal(120 - skipped, t.Step);
        if (mustConverge) Assert.True(acc >= 0.9, $"{policy.Name} {variant}: accuracy {acc:P1}");
    }

    [Fact]
    public void AForcedOverflowSkipsTheUpdateAndHalvesTheScale()
    {
        using var t = Build(Policy("16-mixed"), scaler: new LossScalerSettings { InitScale = 3e38, MaxScale = 3e38 });
        var before = t.GetParameter("fc1.weight").ToDoubles();
        var (train, trainY) = TinyModels.Bars(64, 1);
        var (x, y) = Batch(train, trainY, 0, 32);
        using (x) using (y)
        {
            var r = Step(t, x, y);
            Assert.False(r.AllFinite);
            Assert.Equal(0, t.Step);
            Assert.Equal(before, t.GetParameter("fc1.weight").ToDoubles());
            Assert.Equal((float)1.5e38, t.Scaler!.Scale);
            Assert.Equal(1, t.Scaler.SkippedSteps);
            // The scaler backs off until the same batch's gradients are finite, and then it updates.
            int skips = 1;
            while (!Step(t, x, y).AllFinite) Assert.True(++skips < 100, "the scale never backed off far enough");
            Assert.Equal(skips, t.Scaler.SkippedSteps);
            Assert.Equal((float)(3e38 / Math.Pow(2, skips)), t.Scaler.Scale);
            Assert.Equal(1, t.Step);
            Assert.NotEqual(before, t.GetParameter("fc1.weight").ToDoubles());
        }
    }

    [Fact]
    public void ScalerStateSurvivesACheckpointRoundTrip()
    {
        var policy = Policy("16-mixed").WithOptions(new PrecisionOptions { Scaler = new LossScalerSettings { GrowthInterval = 3 } });
        using var t = Build(policy);
        var (train, trainY) = TinyModels.Bars(256, 1);
        for (int s = 0; s < 4; s++)
        {
            var (x, y) = Batch(train, trainY, s * 32, 32);
            using (x) using (y) Step(t, x, y);
        }
        var scaler = t.Scaler!;
        Assert.Equal(131072f, scaler.Scale);
        Assert.Equal(1, scaler.GrowthTracker);
        var path = Path.Combine(_dir, "ck.bin");
        t.SaveCheckpoint(path);
        using var t2 = Build(policy);
        t2.LoadCheckpoint(path);
        var restored = t2.Scaler!;
        Assert.Equal((scaler.Scale, scaler.GrowthTracker, scaler.SkippedSteps), (restored.Scale, restored.GrowthTracker, restored.SkippedSteps));
        Assert.Equal(t.GetParameter("fc1.weight").ToDoubles(), t2.GetParameter("fc1.weight").ToDoubles());
    }

    [Fact]
    public void ExportsAnFp16InferenceModelThatAgreesWithFp32()
    {
        using var t = Build(Policy("16-mixed"));
        var (train, trainY) = TinyModels.Bars(256, 1);
        for (int s = 0; s < 5; s++) { var (x, y) = Batch(train, trainY, s * 32, 32); using (x) using (y) Step(t, x, y); }
        var fp32 = Path.Combine(_dir, "model.onnx");
        t.ExportModelForInferencing(fp32);
        var half = HalfExport.Convert(ModelIO.Load(fp32), DataType.Float16, KernelProbe.For(DeviceSpec.Cpu));
        Assert.All(half.Graph.Initializers.Values.Where(x => x.Type.IsFloat()), x => Assert.Equal(DataType.Float16, x.Type));
        var feeds = new Dictionary<string, HostTensor> { ["input"] = HostTensor.F32(train.Take(64 * 8).Select(v => (double)v).ToArray(), 8, 1, 8, 8) };
        using var r32 = new OrtRunner(ModelIO.Load(fp32));
        using var r16 = new OrtRunner(half);
        var a = r32.Run(feeds)["logits"].Values; var b = r16.Run(feeds)["logits"].Values;
        double err = Math.Sqrt(a.Zip(b, (p, q) => (p - q) * (p - q)).Sum() / a.Sum(p => p * p));
        log.WriteLine($"fp16 export: relative L2 difference of logits {err:E2}; file {ModelIO.ToBytes(half).Length} bytes vs {new FileInfo(fp32).Length}");
        Assert.True(err < 1e-2);
    }
}
