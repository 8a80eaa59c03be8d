using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Precision.Tests;

/// <summary>Step time and persistent memory per policy for the vit_small fixture on the CPU (a measurement; asserts only that it runs).</summary>
public class PolicyMeasurementTests(ITestOutputHelper log)
{
    [Trait("Category", "Slow")]
    [Theory]
    [InlineData("32-true"), InlineData("16-mixed"), InlineData("bf16-mixed"), InlineData("16-true"), InlineData("bf16-true")]
    public void VitSmallStepTimePerPolicy(string name)
    {
        var policy = PrecisionNames.Resolve(PrecisionPlugin.Policies(), name);
        var dir = RepoPaths.Fixture("autodiff", "vit_small");
        var reference = ModelIO.Load(Path.Combine(dir, "reference.onnx")).Graph.Initializers;
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        var art = TrainingCompiler.Compile(ModelIO.Load(Path.Combine(dir, "model.onnx")), new CompileOptions { Precision = policy, Kernels = probe, GradientAccumulation = true });
        using var t = new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, new OptimizerOptions(), kernels: probe), art.Parameters, art.Buffers,
            new TrainerOptions { IntraOpThreads = 2, LossScaling = policy.LossScaling });
        var input = reference["input"]; var labels = reference["labels"];
        using var x = OrtValue.CreateTensorValueFromMemory(input.ToFloats(), input.Dims);
        using var y = OrtValue.CreateTensorValueFromMemory(labels.ToInt64s(), labels.Dims);
        void Step() { t.LazyResetGrad(); t.TrainStep([x], y); t.OptimizerStep(); }
        for (int i = 0; i < 3; i++) Step();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 20; i++) Step();
        log.WriteLine($"{name}: batch {input.Dims[0]}, {sw.Elapsed.TotalMilliseconds / 20:F2} ms/step, persistent {t.PersistentBytes / 1024.0:F0} KiB, " +
                      $"{art.TrainingModel.Graph.Nodes.Count} training nodes ({art.TrainingModel.Graph.Nodes.Count(n => n.OpType == "Cast")} casts)");
    }
}
