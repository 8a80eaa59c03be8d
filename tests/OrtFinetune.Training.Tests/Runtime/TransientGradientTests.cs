using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Microsoft.ML.OnnxRuntime;

namespace OrtFinetune.Training.Tests.Runtime;

/// <summary>
/// Transient gradients (Optimizers.GradientBuckets and a training model without accumulation): the same updates as the
/// persistent, accumulating trainer, gradients that come out in the optimizer's buckets, and misuse named.
/// </summary>
public class TransientGradientTests
{
    // Small buckets: several buckets, members with alignment gaps, a parameter larger than the cap.
    static readonly OptimizerOptions Adamw = new() { Type = "adamw", WeightDecay = 0.01, BucketBytes = 2048, MaxGradNorm = 1.0 };

    static (TrainingArtifacts Art, Model Optimizer) Build(bool accumulate, OptimizerOptions? o = null)
    {
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = accumulate });
        var optimizer = OptimizerBuilder.Build(art.Parameters, o ?? Adamw);
        if (!accumulate) GradientBuckets.Apply(art.TrainingModel, OptimizerBucket.Read(optimizer));
        return (art, optimizer);
    }

    static Trainer Create((TrainingArtifacts Art, Model Optimizer) b) => new(b.Art.TrainingModel, b.Art.EvalModel, b.Optimizer, b.Art.Parameters, b.Art.Buffers);

    static void Step(Trainer t, float[] images, long[] labels, int start, int n)
    {
        int px = TinyModels.Size * TinyModels.Size;
        using var x = OrtValue.CreateTensorValueFromMemory(images.AsSpan(start * px, n * px).ToArray(), [n, 1, TinyModels.Size, TinyModels.Size]);
        using var y = OrtValue.CreateTensorValueFromMemory(labels.AsSpan(start, n).ToArray(), [n]);
        t.LazyResetGrad();
        t.TrainStep([x], y);
        Assert.True(t.OptimizerStep().AllFinite);
    }

    [Theory]
    [InlineData(2048L)]
    [InlineData(0L)]   // per-parameter optimizer: the training model's own gradient outputs are the optimizer's inputs
    public void TransientGradientsGiveTheSameUpdatesAsPersistentOnes(long bucketBytes)
    {
        var o = Adamw with { BucketBytes = bucketBytes };
        var transientBuild = Build(false, o);
        if (bucketBytes > 0)
        {
            var buckets = OptimizerBucket.Read(transientBuild.Optimizer);
            Assert.True(buckets.Count > 2, $"{buckets.Count} buckets");
            Assert.Contains(buckets, b => b.Members.Sum(m => m.Count) < b.Elements);   // a gap to fill with zeros
            Assert.Equal(buckets.Select(b => b.Name + "_grad"), transientBuild.Art.TrainingModel.Graph.Outputs.Select(x => x.Name).Where(n => n.StartsWith("optimizer_bucket_")));
            Assert.DoesNotContain(transientBuild.Art.TrainingModel.Graph.Outputs, x => x.Name == TrainingArtifacts.GradName(transientBuild.Art.Parameters[0].Name));
        }
        using var persistent = Create(Build(true, o));
        using var transient = Create(transientBuild);
        Assert.False(persistent.TransientGradients);
        Assert.True(transient.TransientGradients);
        Assert.True(transient.PersistentBytes < persistent.PersistentBytes);
        var (x, y) = TinyModels.Bars(256, 3);
        for (int s = 0; s < 4; s++)
        {
            persistent.SetLearningRate(0.01f); transient.SetLearningRate(0.01f);
            Step(persistent, x, y, s * 32, 32);
            Step(transient, x, y, s * 32, 32);
        }
        foreach (var name in persistent.ParameterNames)
            Assert.True(persistent.GetParameter(name).RawData.Span.SequenceEqual(transient.GetParameter(name).RawData.Span), $"parameter '{name}' differs");
    }

    [Fact]
    public void EachTrainStepNeedsItsOptimizerStep()
    {
        using var t = Create(Build(false));
        var (x, y) = TinyModels.Bars(64, 3);
        using var xv = OrtValue.CreateTensorValueFromMemory(x.AsSpan(0, 16 * TinyModels.Size * TinyModels.Size).ToArray(), [16, 1, TinyModels.Size, TinyModels.Size]);
        using var yv = OrtValue.CreateTensorValueFromMemory(y.AsSpan(0, 16).ToArray(), [16]);
        Assert.Contains("needs a TrainStep first", Assert.Throws<TrainingException>(() => t.OptimizerStep()).Message);
        t.TrainStep([xv], yv);
        Assert.Contains("gradient accumulation", Assert.Throws<TrainingException>(() => t.TrainStep([xv], yv)).Message);
        Assert.True(t.OptimizerStep().AllFinite);
        t.TrainStep([xv], yv);   // the pair is complete again
    }

    [Fact]
    public void GradientsThatMatchNoOptimizerInputAreRefused()
    {
        // A training model without accumulation and per-parameter gradients, beside a bucketed optimizer.
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions());
        var optimizer = OptimizerBuilder.Build(art.Parameters, Adamw);
        var e = Assert.Throws<TrainingException>(() => new Trainer(art.TrainingModel, art.EvalModel, optimizer, art.Parameters, art.Buffers));
        Assert.Contains("optimizer_bucket_0_grad", e.Message);
    }
}
