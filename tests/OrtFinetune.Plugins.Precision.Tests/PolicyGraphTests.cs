using System.Text.Json;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Precision;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Precision.Tests;

/// <summary>Compiled graphs per policy: dtypes, interface, kernels; and gradient parity with PyTorch's fp32 gradients.</summary>
public class PolicyGraphTests(ITestOutputHelper log)
{
    public static TheoryData<string> Names => new() { "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true" };
    static IPrecisionPolicy Policy(string name) => PrecisionNames.Resolve(PrecisionPlugin.Policies(), name);

    /// <summary>One invariant across all policies, on the CPU provider with probed kernels.</summary>
    [Theory, MemberData(nameof(Names))]
    public void CompiledGraphsHonourThePolicyOnTheCpu(string name)
    {
        var policy = Policy(name);
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { Precision = policy, Kernels = probe, GradientAccumulation = true });
        var tg = art.TrainingModel.Graph;
        // Parameters, gradients (and so optimizer state) in the storage dtype.
        Assert.All(art.Parameters, p => Assert.Equal(policy.StorageType, p.Type));
        Assert.All(art.Parameters, p => Assert.Equal(policy.StorageType, tg.Outputs.Single(o => o.Name == p.Name + "_grad").Type.ElemType));
        // Interface: fp32 images in, fp32 loss and logits out; loss_scale only with a scaler.
        Assert.Equal(DataType.Float, tg.Inputs[0].Type.ElemType);
        Assert.Equal(DataType.Float, tg.Outputs.Single(o => o.Name == "loss").Type.ElemType);
        Assert.Equal(DataType.Float, tg.Outputs.Single(o => o.Name == "logits").Type.ElemType);
        Assert.Equal(policy.LossScaling != null, tg.Inputs.Any(i => i.Name == TrainingArtifacts.LossScaleInput));
        // No 16-bit node without a kernel on this provider.
        foreach (var m in new[] { art.TrainingModel, art.EvalModel })
        {
            ShapeInference.Infer(m);
            foreach (var n in m.Graph.Nodes.Where(n => n.OpType != "Cast"))
            {
                var q = KernelQuery.Of(n, m.Graph, m.OpsetOf(""));
                Assert.True(q.ProbedType == null || probe.Has(q), $"{name}: {n.Describe()} has no {q.ProbedType} kernel on the CPU");
            }
        }
        var report = DtypeReport.Of(art.TrainingModel);
        log.WriteLine($"{name}: training graph, dtype per op type\n{report}");
        // The sessions load on the CPU.
        using var t = new Trainer(art.TrainingModel, art.EvalModel, Training.Compiler.Optimizers.OptimizerBuilder.Build(art.Parameters,
            new Training.Compiler.Optimizers.OptimizerOptions(), kernels: probe), art.Parameters, art.Buffers);
    }

    [Theory]
    [InlineData(DataType.Float16)]
    [InlineData(DataType.BFloat16)]
    public void MixedGraphsKeepMasterWeightsFp32AndRunTheLowListIn16Bit(DataType low)
    {
        // Kernels not consulted here (as on a GPU with every kernel): the dtypes are the policy's own.
        var policy = new MixedPrecision(low);
        var art = TrainingCompiler.Compile(TinyModels.ConvNet(7), new CompileOptions { Precision = policy });
        var g = art.TrainingModel.Graph;
        ShapeInference.Infer(art.TrainingModel);
        Assert.All(art.Parameters, p => Assert.Equal(DataType.Float, p.Type));
        Assert.All(art.Parameters, p => Assert.Equal(DataType.Float, g.Inputs.Single(i => i.Name == p.Name).Type.ElemType));
        foreach (var n in g.Nodes.Where(n => n.OpType is "Conv" or "Gemm" && n.Name is "conv" or "fc1" or "fc2"))
            Assert.Equal(low, g.TypeOf(n.Outputs[0])!.ElemType);
        Assert.Equal(DataType.Float, g.TypeOf(g.Nodes.Single(n => n.OpType == "SoftmaxCrossEntropyLoss").Inputs[0])!.ElemType);
        var report = DtypeReport.Of(art.TrainingModel);
        log.WriteLine(report.ToString());
        Assert.True(report.Count("Gemm", low) >= 2 && report.Count("Conv", low) >= 1);
    }

    /// <summary>
    /// Mixed-policy gradients against PyTorch's fp32 gradients. The low list runs in 16-bit as on a GPU
    /// (autocast not limited by CPU kernels); the CPU then runs those nodes through fp32 kernels wrapped
    /// in casts, so every 16-bit rounding of the real thing happens (inputs, weights, outputs of each
    /// 16-bit op). 16-mixed runs with a loss scale of 1024 (gradients divided back here).
    /// Tolerances (relative L2 error per parameter gradient): fp16 has unit roundoff u = 2^-11 = 4.9e-4,
    /// bf16 u = 2^-8 = 3.9e-3; a gradient passes through a few dozen rounded ops (forward and backward),
    /// and errors of independent roundings add in quadrature, so ~10u: 5e-3 (fp16) and 4e-2 (bf16).
    /// </summary>
    [Theory]
    [InlineData("mlp", DataType.Float16, 5e-3)]
    [InlineData("mlp", DataType.BFloat16, 4e-2)]
    [InlineData("vit_small", DataType.Float16, 5e-3)]
    [InlineData("vit_small", DataType.BFloat16, 4e-2)]
    public void MixedGradientsMatchFp32WithinRounding(string fixture, DataType low, double tol)
    {
        var dir = RepoPaths.Fixture("autodiff", fixture);
        var reference = ModelIO.Load(Path.Combine(dir, "reference.onnx")).Graph.Initializers;
        var policy = new MixedPrecision(low);
        var art = TrainingCompiler.Compile(ModelIO.Load(Path.Combine(dir, "model.onnx")), new CompileOptions { Precision = policy });
        var fallback = KernelFallback.Apply(art.TrainingModel, KernelProbe.For(DeviceSpec.Cpu));
        log.WriteLine($"{fixture} {low.OnnxName()}: {DtypeReport.Of(art.TrainingModel).Total(low)} nodes in {low.OnnxName()}, {fallback.Wrapped} wrapped for the CPU");
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input"] = HostTensor.FromTensor(reference["input"]),
            ["labels"] = HostTensor.FromTensor(reference["labels"]),
        };
        double scale = policy.LossScaling != null ? 1024 : 1;
        if (policy.LossScaling != null) feeds[TrainingArtifacts.LossScaleInput] = HostTensor.F32([scale]);
        foreach (var t in art.Parameters.Concat(art.Buffers)) feeds[t.Name] = HostTensor.FromTensor(t);
        using var runner = new OrtRunner(art.TrainingModel);
        var outs = runner.Run(feeds);
        double lossErr = Math.Abs(outs["loss"].Values[0] - reference["loss"].ToDoubles()[0]) / Math.Abs(reference["loss"].ToDoubles()[0]);
        log.WriteLine($"loss rel err {lossErr:E2}");
        Assert.True(lossErr < tol);
        double worst = 0;
        foreach (var p in art.Parameters)
        {
            var ours = outs[p.Name + "_grad"].Values.Select(v => v / scale).ToArray();
            var err = RelErr(ours, reference["grad/" + p.Name].ToDoubles());
            worst = Math.Max(worst, err);
            log.WriteLine($"  {p.Name,-60} rel err {err:E2}");
            Assert.True(err <= tol, $"{fixture}/{low}: gradient of '{p.Name}' has relative error {err:E3} > {tol}");
        }
        log.WriteLine($"worst {worst:E2} (tolerance {tol:E0})");
        Assert.True(worst > 0, "the 16-bit rounding should show");
    }
}
