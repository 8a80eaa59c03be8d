using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Precision.Tests;

/// <summary>
/// Persistent memory per policy for the vit_small fixture with AdamW, as PyTorch holds it: per parameter
/// the weights, the gradients and two moments in the policy's storage dtype (fp32 for the mixed policies,
/// 16-bit for the true ones, so they hold half), each starting on a 256-byte boundary in its bucket. No
/// other buffer lives for the whole run. (Step time is a benchmark's business: docs/benchmarks.md.)
/// </summary>
public class PersistentStateTests(ITestOutputHelper log)
{
    [Theory]
    [InlineData("32-true", 4), InlineData("16-mixed", 4), InlineData("bf16-mixed", 4), InlineData("16-true", 2), InlineData("bf16-true", 2)]
    public void VitSmallHoldsWeightsGradientsAndTwoMomentsInTheStorageDtype(string name, int storageBytes)
    {
        var policy = PrecisionNames.Resolve(PrecisionPlugin.Policies(), name);
        var dir = RepoPaths.Fixture("autodiff", "vit_small");
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        var art = TrainingCompiler.Compile(ModelIO.Load(Path.Combine(dir, "model.onnx")), new CompileOptions { Precision = policy, Kernels = probe, GradientAccumulation = true });
        var optimizer = new OptimizerOptions { Type = "adamw" };
        using var t = new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, optimizer, kernels: probe), art.Parameters, art.Buffers,
            new TrainerOptions { IntraOpThreads = 2, LossScaling = policy.LossScaling });
        Assert.Empty(art.Buffers);
        long expected = 4 * art.Parameters.Sum(p => (p.ElementCount * storageBytes + 255) / 256 * 256);
        long fp32 = 4 * art.Parameters.Sum(p => p.ElementCount * 4);
        log.WriteLine($"{name}: {art.Parameters.Count} parameters, {art.Parameters.Sum(p => p.ElementCount)} elements, persistent {t.PersistentBytes} bytes ({(double)t.PersistentBytes / fp32:F3}x fp32 weights + grads + moments)");
        Assert.Equal(expected, t.PersistentBytes);
    }
}
