using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Compiler.Scheduling;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>
/// The memory model's prediction (Training.Compiler.Scheduling.MemoryModel) against a measured training run. The
/// measurement is this process's resident set, so nothing else of the assembly may run beside it (a collection that
/// disables parallelization runs alone): in a parallel run the other tests' allocations counted as ours (3.1x).
/// </summary>
[Collection(Name)]
public class MemoryModelTests(ITestOutputHelper log)
{
    public const string Name = "resident-set-measurement";

    /// <summary>
    /// A small ViT at a batch whose activations dominate, two full AdamW steps with ORT's arena off, in this process:
    /// the resident set's peak (VmHWM, reset through /proc/self/clear_refs) above the resident set before the trainer
    /// existed, against the prediction without its runtime allowance (the process was already running). Stated factor:
    /// measured within 0.67x-1.5x of predicted.
    /// </summary>
    [Fact]
    public void PredictionIsWithinAFactorOfTheMeasuredPeak()
    {
        if (!OperatingSystem.IsLinux()) return;
        var model = VitBuilder.Build(new VitConfig { ImageSize = 64, PatchSize = 8, Layers = 4, Heads = 4, Hidden = 128, MlpDim = 512, NumClasses = 10 }, seed: 1);
        var art = TrainingCompiler.Compile(model, new CompileOptions { GradientAccumulation = true });
        var optimizer = OptimizerBuilder.Build(art.Parameters, new OptimizerOptions { Type = "adamw", WeightDecay = 0.01 });
        long batch = 16;
        while (batch < 4096 && MemoryModel.Predict(art.TrainingModel, optimizer, batch).ActivationPeakBytes < 400L << 20) batch *= 2;
        var predicted = MemoryModel.Predict(art.TrainingModel, optimizer, batch);
        log.WriteLine($"batch {batch}: {predicted.Summary("host")}");
        foreach (var (v, b) in predicted.LargestAtPeak.Take(5)) log.WriteLine($"  at the peak: {v} {b / 1048576.0:F1} MiB");

        long[] shape = [batch, 3, 64, 64];
        var rng = new Random(1);
        var pixels = new float[shape.Aggregate(1L, (x, y) => x * y)];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rng.NextDouble() * 2 - 1);
        var labels = new long[batch];
        for (int i = 0; i < labels.Length; i++) labels[i] = rng.Next(10);
        using var x = OrtValue.CreateTensorValueFromMemory(pixels, shape);
        using var y = OrtValue.CreateTensorValueFromMemory(labels, [batch]);

        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5");
        long before = Status("VmRSS");
        using (var t = new Trainer(art.TrainingModel, art.EvalModel, optimizer, art.Parameters, art.Buffers, new TrainerOptions { CpuMemArena = false }))
        {
            for (int i = 0; i < 2; i++)
            {
                t.LazyResetGrad();
                t.TrainStep([x], y);
                t.OptimizerStep();
            }
        }
        long measured = Status("VmHWM") - before;
        long expected = predicted.TotalBytes - predicted.RuntimeBytes;
        double ratio = (double)measured / expected;
        log.WriteLine($"measured {measured / 1048576.0:F0} MiB above the resident set before the trainer, predicted {expected / 1048576.0:F0} MiB: measured / predicted {ratio:F2}");
        Assert.InRange(ratio, 0.67, 1.5);
    }

    /// <summary>
    /// Transient gradients (Optimizers.GradientBuckets) in the memory model, ViT-B/16 geometry at batch 8 with the CPU's
    /// 4 MiB buckets: the gradients leave the persistent state, and because a bucket's gradients are made together in the
    /// backward (bucket plan's window) the step's activation peak grows by the few gradients made before it, so the
    /// predicted peak drops by nearly the gradients' size (330 MiB; at the time of writing 2,277 -> 1,967 MiB).
    /// </summary>
    [Fact]
    public void TransientGradientsLowerThePredictedPeakByNearlyTheirSize()
    {
        var model = VitBuilder.Build(new VitConfig { ImageSize = 224, PatchSize = 16, Layers = 12, Heads = 12, Hidden = 768, MlpDim = 3072, NumClasses = 1000 }, seed: 1);
        var o = new OptimizerOptions { Type = "adamw", WeightDecay = 0.05, BucketBytes = OptimizerBuilder.DefaultBucketBytesFor(cuda: false) };
        var persistent = TrainingCompiler.Compile(model, new CompileOptions { GradientAccumulation = true });
        var transient = TrainingCompiler.Compile(model, new CompileOptions());
        var optimizer = OptimizerBuilder.Build(transient.Parameters, o);
        GradientBuckets.Apply(transient.TrainingModel, OptimizerBucket.Read(optimizer));
        var before = MemoryModel.Predict(persistent.TrainingModel, optimizer, 8);
        var after = MemoryModel.Predict(transient.TrainingModel, optimizer, 8);
        log.WriteLine("persistent gradients: " + before.Summary("host"));
        log.WriteLine("transient gradients:  " + after.Summary("host"));
        long grads = transient.Parameters.Sum(p => p.ElementCount * 4);
        Assert.Equal(0, before.TransientGradientBytes);
        Assert.InRange(after.TransientGradientBytes, grads, grads + grads / 50);   // alignment gaps
        Assert.Equal(before.PersistentBytes - after.TransientGradientBytes, after.PersistentBytes);
        Assert.True(after.ActivationPeakBytes - before.ActivationPeakBytes < grads / 10, $"activation peak {before.ActivationPeakBytes >> 20} -> {after.ActivationPeakBytes >> 20} MiB");
        Assert.True(after.TotalBytes < before.TotalBytes - grads * 8 / 10, $"total {before.TotalBytes >> 20} -> {after.TotalBytes >> 20} MiB");
    }

    static long Status(string key)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(key + ":", StringComparison.Ordinal));
        return long.Parse(line.Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }

    sealed class Bf16Mixed : OrtFinetune.Abstractions.IPrecisionPolicy
    {
        public string Name => "bf16-mixed";
        public IReadOnlyList<string> Aliases => [];
        public string Description => "test policy: autocast to bfloat16";
        public OrtFinetune.Onnx.DataType ComputeType => OrtFinetune.Onnx.DataType.BFloat16;
        public OrtFinetune.Onnx.DataType StorageType => OrtFinetune.Onnx.DataType.Float;
        public OrtFinetune.Abstractions.LossScalerSettings? LossScaling => null;
        public OrtFinetune.Abstractions.UpdateRounding Rounding => OrtFinetune.Abstractions.UpdateRounding.Nearest;
        public void ConvertForward(OrtFinetune.Onnx.Model forward, OrtFinetune.Abstractions.IPrecisionPasses passes) => passes.Autocast(forward, OrtFinetune.Onnx.DataType.BFloat16, new OrtFinetune.Abstractions.AutocastLists());
        public OrtFinetune.Abstractions.IPrecisionPolicy WithOptions(OrtFinetune.Abstractions.PrecisionOptions options) => this;
    }

    /// <summary>
    /// Mixed policies on the CPU (no 16-bit matrix kernels): with CompileOptions.LowPrecisionActivations the activations at
    /// the step's peak drop to at most 0.65x those of 32-true (memory model in ORT's execution order: 0.61x, 559 of 914 MiB,
    /// with the 16-bit weight copies recomputed in the backward; without them 0.77x; without the option 1.00x; issue 11's
    /// target, 0.6x, is not quite reached: the peak is the last layer's GELU, computed in fp32 between casts on the CPU).
    /// ViT-B/16 geometry (12 layers, d 768), batch 8. (An earlier figure, 0.64x, was taken in a node order shape inference
    /// had re-sorted, not the order ORT runs.)
    /// </summary>
    [Fact]
    public void MixedActivationsWithLowPrecisionActivationsAreAtMostTwoThirdsOfFp32()
    {
        var model = VitBuilder.Build(new VitConfig { ImageSize = 224, PatchSize = 16, Layers = 12, Heads = 12, Hidden = 768, MlpDim = 3072, NumClasses = 1000 }, seed: 1);
        var kernels = KernelProbe.For(DeviceSpec.Cpu);
        long Peak(OrtFinetune.Abstractions.IPrecisionPolicy? p, bool low)
        {
            var e = MemoryModel.Predict(TrainingCompiler.Compile(model,
                new CompileOptions { GradientAccumulation = true, Precision = p, Kernels = kernels, LowPrecisionActivations = low }).TrainingModel, null, 8);
            log.WriteLine($"{p?.Name ?? "32-true"}{(low ? ", 16-bit activations" : "")}: peak at {e.PeakNode}; largest: " + string.Join(", ", e.LargestAtPeak.Select(x => FormattableString.Invariant($"{x.Value} {x.Bytes / 1048576.0:F1}"))));
            return e.ActivationPeakBytes;
        }
        long full = Peak(null, false), mixed = Peak(new Bf16Mixed(), false), low = Peak(new Bf16Mixed(), true);
        log.WriteLine($"activations at the peak: 32-true {full / 1048576.0:F0} MiB, bf16-mixed {mixed / 1048576.0:F0} MiB ({(double)mixed / full:F2}x), with 16-bit activations {low / 1048576.0:F0} MiB ({(double)low / full:F2}x)");
        Assert.Equal(full, mixed);
        Assert.True(low <= 0.65 * full, $"{(double)low / full:F2}x");
    }
}

[CollectionDefinition(MemoryModelTests.Name, DisableParallelization = true)]
public sealed class ResidentSetMeasurement { }
