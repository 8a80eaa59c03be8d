using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Optimizers;

/// <summary>
/// Head-only warm-up (OptimizerOptions.HeadParameters, the body_step input; what --head-warmup-epochs drives): at
/// body_step 0 the body's parameters and optimizer state stay bit-identical and its gradients count in neither the
/// norm nor the finite flag, as if frozen in PyTorch; its first real update is a first step (bias correction and
/// momentum start from 1), as torch.optim does for a parameter that gets its first gradient late.
/// </summary>
public class OptimizerHeadWarmupTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-headwarmup-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static readonly string[] Head = ["head.weight", "head.bias"];

    public static TheoryData<string, long> Cases()
    {
        var d = new TheoryData<string, long>();
        foreach (var type in new[] { "adamw", "sgd" })
            foreach (var bytes in new[] { 0L, OptimizerBuilder.DefaultBucketBytes, 64L }) d.Add(type, bytes);
        return d;
    }

    static OptimizerOptions Options(string type, long bucketBytes, bool head = true) => new()
    {
        Type = type, Momentum = type == "sgd" ? 0.9 : 0, Dampening = type == "sgd" ? 0.1 : 0, WeightDecay = 0.05, MaxGradNorm = 1.0,
        BucketBytes = bucketBytes, LrMultipliers = OptimizerLrMultiplierTests.Multipliers, HeadParameters = head ? Head : null,
    };

    [Theory, MemberData(nameof(Cases))]
    public void HeadOnlyStepsLeaveTheBodyAndItsStateBitIdentical(string type, long bucketBytes)
    {
        var ps = OptimizerLrMultiplierTests.Parameters();
        var o = Options(type, bucketBytes);
        using var h = new OptimizerHarness(OptimizerBuilder.Build(ps, o), ps, o);
        if (bucketBytes > 0) Assert.All(h.Buckets, b => Assert.True(b.Members.All(m => Head.Contains(m.Param) != b.Body), $"{b.Name} mixes head and body"));
        var initial = h.Snapshot();
        var body = initial.Keys.Where(k => !Head.Any(x => k == x || k.StartsWith(x + "."))).ToList();
        Assert.NotEmpty(body);

        for (int t = 1; t <= 2; t++)
        {
            var g = OptimizerLrMultiplierTests.Gradients(ps, t);
            g["block0.bias"][1] = float.NaN;   // a body gradient is not looked at in a head-only step
            h.Step(g, 0.01f, t, bodyStep: 0);
            Assert.True(h.AllFinite);
            double headNorm = Math.Sqrt(Head.Sum(n => g[n].Sum(x => (double)x * x)));
            Assert.Equal(headNorm, h.GradNorm, 1e-5 * headNorm);
        }
        foreach (var k in body) Assert.Equal(initial[k], h.Get(k));   // exact: parameters and every state
        foreach (var k in Head) Assert.NotEqual(initial[k], h.Get(k));

        // The body's first update: what the same optimizer without a warm-up does at step 1 from the initial state
        // (the clipping factor comes from all gradients, head and body, in both).
        var g3 = OptimizerLrMultiplierTests.Gradients(ps, 3);
        h.Step(g3, 0.01f, 3, bodyStep: 1);
        Assert.True(h.AllFinite);
        var plainOptions = Options(type, bucketBytes, head: false);
        using var plain = new OptimizerHarness(OptimizerBuilder.Build(ps, plainOptions), ps, plainOptions);
        plain.Step(g3, 0.01f, 1);
        Assert.Equal(plain.GradNorm, h.GradNorm, 1e-5 * plain.GradNorm);
        double worst = 0;
        foreach (var k in body)
        {
            Assert.NotEqual(initial[k], h.Get(k));
            var e = RelErr(h.Get(k), plain.Get(k).Select(x => (double)x).ToArray());
            worst = Math.Max(worst, e);
            Assert.True(e <= 1e-6, $"'{k}' after the body's first update: relative error {e:E2} against a first step");
        }
        log.WriteLine($"{type}, {(bucketBytes == 0 ? "per-parameter" : $"{h.Buckets.Count} buckets")}: body unchanged through 2 head-only steps; its first update within {worst:E2} of a step-1 update");
    }

    [Fact]
    public void ANonFiniteBodyGradientStillSkipsAFullStep()
    {
        var ps = OptimizerLrMultiplierTests.Parameters();
        var o = Options("adamw", OptimizerBuilder.DefaultBucketBytes);
        using var h = new OptimizerHarness(OptimizerBuilder.Build(ps, o), ps, o);
        var before = h.Snapshot();
        var g = OptimizerLrMultiplierTests.Gradients(ps, 1);
        g["block1.weight"][0] = float.PositiveInfinity;
        h.Step(g, 0.01f, 1, bodyStep: 1);
        Assert.False(h.AllFinite);
        foreach (var (k, v) in before) Assert.Equal(v, h.Get(k));
    }

    [Fact]
    public void WarmUpNeedsATrainableHeadParameter()
    {
        var e = Assert.Throws<CompileException>(() => OptimizerBuilder.Build(OptimizerLrMultiplierTests.Parameters(), new OptimizerOptions { HeadParameters = ["classifier.weight"] }));
        Assert.Contains("classifier.weight", e.Message);
    }

    [Fact]
    public void ArtifactsDescribeTheBodyStepInputAndTheGroups()
    {
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true });
        var o = new OptimizerOptions { Type = "adamw", HeadParameters = ["fc2.weight", "fc2.bias"], LrMultipliers = new Dictionary<string, double> { ["conv.weight"] = 0.5, ["conv.bias"] = 0.5 } };
        var optimizer = OptimizerBuilder.Build(art.Parameters, o);
        var folder = Path.Combine(_dir, "artifacts");
        ArtifactWriter.Write(art, folder, "tiny", optimizer, o);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, ArtifactWriter.ManifestFile)));
        var root = doc.RootElement;
        var stepInput = root.GetProperty("step_inputs").EnumerateArray().Single(x => x.GetProperty("name").GetString() == OptimizerBuilder.BodyStep);
        Assert.Equal("int64", stepInput.GetProperty("dtype").GetString());
        var input = root.GetProperty("models").GetProperty("optimizer").GetProperty("inputs").EnumerateArray().ToList();
        Assert.Equal([OptimizerBuilder.LearningRate, OptimizerBuilder.Step, OptimizerBuilder.GradScale, OptimizerBuilder.BodyStep], input.Take(4).Select(x => x.GetProperty("name").GetString()));
        Assert.Equal("step_scalar", input[3].GetProperty("role").GetString());
        foreach (var p in root.GetProperty("parameters").EnumerateArray())
        {
            var name = p.GetProperty("name").GetString()!;
            Assert.Equal(name.StartsWith("conv.") ? 0.5 : 1.0, p.GetProperty("lr_multiplier").GetDouble());
            Assert.Equal(!name.StartsWith("fc2."), p.GetProperty("body").GetBoolean());
        }
        foreach (var b in root.GetProperty("optimizer_buckets").EnumerateArray())
        {
            var members = b.GetProperty("members").EnumerateArray().Select(m => m.GetProperty("parameter").GetString()!).ToList();
            Assert.All(members, m => Assert.Equal(m.StartsWith("conv.") ? 0.5 : 1.0, b.GetProperty("lr_multiplier").GetDouble()));
            Assert.All(members, m => Assert.Equal(!m.StartsWith("fc2."), b.GetProperty("body").GetBoolean()));
        }
        Assert.Equal(["fc2.weight", "fc2.bias"], root.GetProperty("optimizer_settings").GetProperty("head_parameters").EnumerateArray().Select(x => x.GetString()));
    }

    [Fact]
    public void TrainerHeadOnlyUpdatesKeepTheBodyAndCountBodySteps()
    {
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true });
        string[] head = ["fc2.weight", "fc2.bias"];
        var o = new OptimizerOptions { Type = "adamw", WeightDecay = 0.05, HeadParameters = head };
        using var t = new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, o), art.Parameters, art.Buffers);
        var (images, labels) = TinyModels.Bars(64, 1);
        void Steps(int n)
        {
            for (int s = 0; s < n; s++)
            {
                int px = TinyModels.Size * TinyModels.Size;
                using var x = OrtValue.CreateTensorValueFromMemory(images.AsSpan(s * 16 * px, 16 * px).ToArray(), [16, 1, TinyModels.Size, TinyModels.Size]);
                using var y = OrtValue.CreateTensorValueFromMemory(labels.AsSpan(s * 16, 16).ToArray(), [16]);
                t.LazyResetGrad();
                t.TrainStep([x], y);
                t.SetLearningRate(0.01f);
                Assert.True(t.OptimizerStep().AllFinite);
            }
        }
        var start = Path.Combine(_dir, "start.ckpt");
        t.SaveCheckpoint(start);
        t.UpdateBody = false;
        Steps(3);
        Assert.Equal((3L, 0L), (t.Step, t.BodyStep));
        var warm = Path.Combine(_dir, "warm.ckpt");
        t.SaveCheckpoint(warm);
        var a = CheckpointFile.Load(start);
        var b = CheckpointFile.Load(warm);
        var bodyTensors = a.Tensors.Where(x => !head.Any(hd => x.Name == "param/" + hd || x.Name.StartsWith("optim/" + hd + "."))).ToList();
        Assert.Equal(art.Parameters.Count - 2, bodyTensors.Count(x => x.Name.StartsWith("param/")));
        foreach (var x in bodyTensors) Assert.Equal(x.RawData.ToArray(), b.Get(x.Name, warm).RawData.ToArray());
        foreach (var hd in head) Assert.NotEqual(a.Get("param/" + hd, start).RawData.ToArray(), b.Get("param/" + hd, warm).RawData.ToArray());

        t.UpdateBody = true;
        Steps(2);
        Assert.Equal((5L, 2L), (t.Step, t.BodyStep));
        Assert.NotEqual(a.Get("param/conv.weight", start).RawData.ToArray(), t.GetParameter("conv.weight").RawData.ToArray());
        var after = Path.Combine(_dir, "after.ckpt");
        t.SaveCheckpoint(after);
        t.LoadCheckpoint(warm);
        Assert.Equal((3L, 0L), (t.Step, t.BodyStep));
        t.LoadCheckpoint(after);
        Assert.Equal((5L, 2L), (t.Step, t.BodyStep));

        // An optimizer without the warm-up input refuses head-only updates.
        using var plain = new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, o with { HeadParameters = null }), art.Parameters, art.Buffers);
        plain.UpdateBody = false;
        Assert.Throws<TrainingException>(() => plain.OptimizerStep());
    }
}
