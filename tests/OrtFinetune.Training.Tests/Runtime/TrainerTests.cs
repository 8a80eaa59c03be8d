using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Runtime;

public class TrainerTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-trainer-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    string CompileTo(string name, OptimizerOptions? optim = null)
    {
        var folder = Path.Combine(_dir, name);
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true });
        ArtifactWriter.Write(art, folder, "tiny", OptimizerBuilder.Build(art.Parameters, optim ?? new OptimizerOptions { Type = "adamw", WeightDecay = 0.01 }));
        return folder;
    }

    static (OrtValue X, OrtValue Y) Batch(float[] images, long[] labels, int start, int n)
    {
        int px = TinyModels.Size * TinyModels.Size;
        var x = OrtValue.CreateTensorValueFromMemory(images.AsSpan(start * px, n * px).ToArray(), [n, 1, TinyModels.Size, TinyModels.Size]);
        var y = OrtValue.CreateTensorValueFromMemory(labels.AsSpan(start, n).ToArray(), [n]);
        return (x, y);
    }

    static void TrainSteps(Trainer t, float[] images, long[] labels, int from, int steps, int batch, int accumulate = 1)
    {
        for (int s = from; s < from + steps; s++)
        {
            t.LazyResetGrad();
            for (int k = 0; k < accumulate; k++)
            {
                int start = ((s * accumulate + k) * batch) % (labels.Length - batch);
                var (x, y) = Batch(images, labels, start, batch);
                using (x) using (y) t.TrainStep([x], y);
            }
            t.SetLearningRate(0.01f * (1 + s % 3) / 2);
            Assert.True(t.OptimizerStep().AllFinite);
        }
    }

    [Fact]
    public void LearnsASeparableImageTask()
    {
        using var t = Trainer.Load(CompileTo("learn"));
        var (train, trainY) = TinyModels.Bars(2048, 1);
        var (test, testY) = TinyModels.Bars(512, 2);
        (double Loss, double Acc) Evaluate()
        {
            double loss = 0, correct = 0;
            for (int i = 0; i < 512; i += 128)
            {
                var (x, y) = Batch(test, testY, i, 128);
                using (x) using (y) { var r = t.EvalStep([x], y); loss += r.Loss * 128; correct += r.Top1Correct; }
            }
            return (loss / 512, correct / 512);
        }
        var before = Evaluate();
        t.SetLearningRate(0.01f);
        for (int s = 0; s < 120; s++)
        {
            t.LazyResetGrad();
            var (x, y) = Batch(train, trainY, (s * 32) % 2016, 32);
            using (x) using (y) t.TrainStep([x], y);
            t.OptimizerStep();
        }
        var after = Evaluate();
        log.WriteLine($"test loss {before.Loss:F3} -> {after.Loss:F3}, accuracy {before.Acc:P1} -> {after.Acc:P1} (chance 25%)");
        Assert.Equal(120, t.Step);
        Assert.True(after.Acc >= 0.9, $"accuracy {after.Acc:P1} after training");
        Assert.True(after.Loss < before.Loss / 2);
    }

    [Fact]
    public void ResumeFromCheckpointIsExact()
    {
        var folder = CompileTo("resume");
        var (x, y) = TinyModels.Bars(512, 3);
        using var straight = Trainer.Load(folder);
        TrainSteps(straight, x, y, 0, 6, 16, accumulate: 2);

        var ckpt = Path.Combine(_dir, "half.ckpt");
        using (var first = Trainer.Load(folder))
        {
            TrainSteps(first, x, y, 0, 3, 16, accumulate: 2);
            first.SaveCheckpoint(ckpt, new Dictionary<string, string> { ["data_position"] = "3" });
        }
        using var resumed = Trainer.Load(folder);
        var extra = resumed.LoadCheckpoint(ckpt);
        Assert.Equal("3", extra["data_position"]);
        Assert.Equal(3, resumed.Step);
        TrainSteps(resumed, x, y, 3, 3, 16, accumulate: 2);

        foreach (var name in straight.ParameterNames)
            Assert.True(straight.GetParameter(name).RawData.Span.SequenceEqual(resumed.GetParameter(name).RawData.Span), $"parameter '{name}' differs after resume");
        Assert.Equal(6, resumed.Step);
    }

    [Fact]
    public void GradientAccumulationEqualsOneLargeBatch()
    {
        // Sum reduction makes k micro-batches of n exactly one batch of k*n (up to float rounding).
        var folder = Path.Combine(_dir, "sum");
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true, Loss = new() { Reduction = "sum" } });
        ArtifactWriter.Write(art, folder, "tiny", OptimizerBuilder.Build(art.Parameters, new OptimizerOptions { Type = "sgd", WeightDecay = 0 }));
        var (x, y) = TinyModels.Bars(64, 4);
        using var big = Trainer.Load(folder);
        using var small = Trainer.Load(folder);
        big.SetLearningRate(0.001f); small.SetLearningRate(0.001f);
        var (bx, by) = Batch(x, y, 0, 32);
        using (bx) using (by) big.TrainStep([bx], by);
        big.OptimizerStep();
        small.LazyResetGrad();
        for (int k = 0; k < 4; k++) { var (sx, sy) = Batch(x, y, k * 8, 8); using (sx) using (sy) small.TrainStep([sx], sy); }
        small.OptimizerStep();
        foreach (var name in big.ParameterNames)
        {
            var a = big.GetParameter(name).ToFloats();
            var b = small.GetParameter(name).ToFloats();
            for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5 * (1 + Math.Abs(a[i])), $"{name}[{i}]: {a[i]} vs {b[i]}");
        }
    }

    [Fact]
    public void ExportedModelGivesTheEvalLogits()
    {
        using var t = Trainer.Load(CompileTo("export"));
        var (x, y) = TinyModels.Bars(256, 5);
        TrainSteps(t, x, y, 0, 5, 32);
        var path = Path.Combine(_dir, "exported.onnx");
        t.ExportModelForInferencing(path);
        var (bx, by) = Batch(x, y, 0, 16);
        using (bx) using (by)
        {
            var evalLogits = t.EvalOutputs([bx], by)["logits"].ToFloats();
            using var s = new InferenceSession(path);
            Assert.Equal(["input"], s.InputNames);
            Assert.Equal(["logits"], s.OutputNames);
            using var ro = new RunOptions();
            using var res = s.Run(ro, ["input"], [bx], ["logits"]);
            var exported = res[0].GetTensorDataAsSpan<float>().ToArray();
            Assert.Equal(evalLogits.Length, exported.Length);
            for (int i = 0; i < exported.Length; i++) Assert.Equal(evalLogits[i], exported[i], 1e-6f);
        }
    }

    [Fact]
    public void CheckpointFromAnotherModelIsRefusedAndNothingChanges()
    {
        var folder = CompileTo("other");
        using var t = Trainer.Load(folder);
        var before = t.GetParameter("fc2.bias").ToFloats();
        var ck = new CheckpointFile();
        ck.Meta["fingerprint"] = "fc9.weight:float[3]";
        ck.Meta["optimizer"] = "adamw";
        ck.Tensors.Add(Tensor.Float("param/fc9.weight", [1, 2, 3], 3));
        var path = Path.Combine(_dir, "other.ckpt");
        ck.Save(path);
        var e = Assert.Throws<CheckpointException>(() => t.LoadCheckpoint(path));
        Assert.Contains("another model", e.Message);
        Assert.Contains("other.ckpt", e.Message);
        Assert.Equal(before, t.GetParameter("fc2.bias").ToFloats());
    }

    [Fact]
    public void TruncatedOrCorruptCheckpointsGiveClearErrors()
    {
        using var t = Trainer.Load(CompileTo("corrupt"));
        var path = Path.Combine(_dir, "good.ckpt");
        t.SaveCheckpoint(path);
        var bytes = File.ReadAllBytes(path);
        var cut = Path.Combine(_dir, "cut.ckpt");
        File.WriteAllBytes(cut, bytes[..(bytes.Length / 2)]);
        Assert.Contains("truncated", Assert.Throws<CheckpointException>(() => t.LoadCheckpoint(cut)).Message);
        var junk = Path.Combine(_dir, "junk.ckpt");
        File.WriteAllBytes(junk, "not a checkpoint at all"u8.ToArray());
        Assert.Contains("not an OrtFinetune checkpoint", Assert.Throws<CheckpointException>(() => t.LoadCheckpoint(junk)).Message);
        var version = (byte[])bytes.Clone();
        var text = System.Text.Encoding.ASCII.GetString(version, 16, 40);
        var at = text.IndexOf("\"format\":2", StringComparison.Ordinal);
        Assert.True(at >= 0, text);
        version[16 + at + 9] = (byte)'9';
        var v9 = Path.Combine(_dir, "v9.ckpt");
        File.WriteAllBytes(v9, version);
        Assert.Contains("format version 9", Assert.Throws<CheckpointException>(() => t.LoadCheckpoint(v9)).Message);
        // Version 1 was this layout without the checksum before the end marker: refused, naming the version.
        version[16 + at + 9] = (byte)'1';
        var v1 = Path.Combine(_dir, "v1.ckpt");
        File.WriteAllBytes(v1, [.. version[..^16], .. version[^8..]]);
        var e1 = Assert.Throws<CheckpointException>(() => t.LoadCheckpoint(v1)).Message;
        Assert.Contains("v1.ckpt", e1);
        Assert.Contains("format version 1", e1);
        Assert.Contains("checksum", e1);
        t.LoadCheckpoint(path);
    }

    [Fact]
    public void PersistentMemoryIsOneBufferPerParameterGradientAndMoment()
    {
        var initializers = TinyModels.ConvNet(7).Graph.Initializers.Values.ToList();
        long paramBytes = initializers.Sum(p => p.RawData.Length);
        // AdamW: weights + gradients + two moments = 4x the parameters, as in PyTorch.
        using (var t = Trainer.Load(CompileTo("memory", new OptimizerOptions { Type = "adamw", WeightDecay = 0.01, BucketBytes = 0 })))
            Assert.Equal(4 * paramBytes, t.PersistentBytes);
        // In buckets (the default) each member starts on a 256-byte boundary; nothing else is added.
        using (var t = Trainer.Load(CompileTo("memory-buckets")))
            Assert.Equal(4 * initializers.Sum(p => (p.RawData.Length + 255L) / 256 * 256), t.PersistentBytes);
    }

    [Fact]
    public void BucketedAndPerParameterOptimizersTrainTheSame()
    {
        // Same artifacts but the optimizer graph: a few SGD-momentum steps must give the same weights.
        using var a = Trainer.Load(CompileTo("per-param", new OptimizerOptions { Type = "sgd", Momentum = 0.9, WeightDecay = 0.01, BucketBytes = 0 }));
        using var b = Trainer.Load(CompileTo("bucketed", new OptimizerOptions { Type = "sgd", Momentum = 0.9, WeightDecay = 0.01, BucketBytes = 256 }));
        var (images, labels) = TinyModels.Bars(4, 11);
        var (x, y) = Batch(images, labels, 0, 4);
        foreach (var t in new[] { a, b })
        {
            t.SetLearningRate(0.05f);
            for (int i = 0; i < 3; i++) { t.LazyResetGrad(); t.TrainStep([x], y); t.OptimizerStep(); }
        }
        foreach (var name in a.ParameterNames)
            Assert.Equal(a.GetParameter(name).ToFloats(), b.GetParameter(name).ToFloats());
    }

    [Fact]
    public void Bf16SupportIsReadFromTheCudaDevice()
    {
        Assert.False(CudaCapability.HasBf16(DeviceSpec.Cpu));
        // Without a CUDA runtime (these machines) there is no answer, never an exception; with one, a real compute capability.
        if (CudaCapability.Of(0) is { } cc) Assert.InRange(cc.Major, 3, 20);
        else Assert.False(CudaCapability.HasBf16(DeviceSpec.Parse("cuda:0")));
    }

    [Fact]
    public void CudaWithoutTheCudaPackageIsAClearError()
    {
        var e = Assert.Throws<TrainingException>(() => Trainer.Load(CompileTo("cuda"), new TrainerOptions { Device = DeviceSpec.Parse("cuda:0") }));
        Assert.Contains("CUDA execution provider is not available", e.Message);
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:x")]
    [InlineData("cuda:-1")]
    public void BadDeviceNamesAreRefused(string text) =>
        Assert.Contains($"device '{text}'", Assert.Throws<TrainingException>(() => DeviceSpec.Parse(text)).Message);
}
