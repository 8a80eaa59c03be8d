using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;

namespace OrtFinetune.Training.Tests.Runtime;

/// <summary>
/// The per-step scalars (accumulation reset, loss scale, learning rate, step, gradient divisor) as the graphs
/// read them, through the <see cref="StepInputProbe"/> echo outputs. On the CPU provider a bound host input
/// is read where it lies, so these tests pass with or without the rebinding in <see cref="StepScalar{T}"/>:
/// they cannot see the CUDA bug (IOBinding copies a host input to the device at bind time). They check the
/// probe that `ortfinetune selftest --device cuda` compares on the device, and the values the host intends.
/// </summary>
public class StepScalarTests
{
    static Trainer Build(bool lossScaling)
    {
        var scaled = new MixedScaling();
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true, Precision = lossScaling ? scaled : null });
        var optimizer = OptimizerBuilder.Build(art.Parameters, new OptimizerOptions { Type = "adamw" });
        Assert.Equal(lossScaling ? 2 : 1, StepInputProbe.AddTo(art.TrainingModel).Count);
        Assert.Equal(3, StepInputProbe.AddTo(optimizer).Count);
        return new Trainer(art.TrainingModel, art.EvalModel, optimizer, art.Parameters, art.Buffers,
            new TrainerOptions { LossScaling = lossScaling ? new LossScalerSettings { InitScale = 256, GrowthInterval = 2 } : null });
    }

    /// <summary>32-true compute with a loss_scale input: the scaling part of a policy, nothing else.</summary>
    sealed class MixedScaling : IPrecisionPolicy
    {
        public string Name => "scaled-32";
        public IReadOnlyList<string> Aliases => [];
        public string Description => "fp32 with a loss_scale input";
        public void ConvertForward(Onnx.Model forward, IPrecisionPasses passes) { }
        public Onnx.DataType StorageType => Onnx.DataType.Float;
        public Onnx.DataType ComputeType => Onnx.DataType.Float;
        public LossScalerSettings? LossScaling => new();
        public UpdateRounding Rounding => UpdateRounding.Nearest;
        public IPrecisionPolicy WithOptions(PrecisionOptions options) => this;
    }

    [Fact]
    public void TheGraphsReadEveryValueTheHostSets()
    {
        using var t = Build(lossScaling: true);
        var (images, labels) = TinyModels.Bars(64, 3);
        int px = TinyModels.Size * TinyModels.Size;
        float expectedScale = 256;
        for (int step = 1; step <= 5; step++)
        {
            t.LazyResetGrad();
            for (int micro = 0; micro < 2; micro++)
            {
                using var x = OrtValue.CreateTensorValueFromMemory(images.AsSpan(micro * 8 * px, 8 * px).ToArray(), [8, 1, TinyModels.Size, TinyModels.Size]);
                using var y = OrtValue.CreateTensorValueFromMemory(labels.AsSpan(micro * 8, 8).ToArray(), [8]);
                t.TrainStep([x], y);
                Assert.Equal(micro == 0, t.LastProbe.LazyResetGrad);
                Assert.Equal(expectedScale, t.LastProbe.LossScale);
            }
            float lr = 1e-3f * step;
            t.SetLearningRate(lr);
            var o = t.OptimizerStep();
            Assert.True(o.AllFinite);
            var p = t.LastProbe;
            Assert.Equal((lr, (long)step, expectedScale), (p.LearningRate!.Value, p.Step!.Value, p.GradScale!.Value));
            if (step % 2 == 0) expectedScale *= 2;   // growth interval 2
            Assert.Equal(expectedScale, t.Scaler!.Scale);
        }
    }

    [Fact]
    public void WithoutProbeOutputsNothingIsEchoed()
    {
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { GradientAccumulation = true });
        using var t = new Trainer(art.TrainingModel, art.EvalModel, OptimizerBuilder.Build(art.Parameters, new OptimizerOptions()), art.Parameters, art.Buffers);
        Assert.Equal(new StepProbe(null, null, null, null, null), t.LastProbe);
        Assert.Null(t.Scaler);
    }
}
