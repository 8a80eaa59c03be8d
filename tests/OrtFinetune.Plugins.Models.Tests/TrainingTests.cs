using System.Diagnostics;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using Microsoft.ML.OnnxRuntime;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>The built ViTs compile into training graphs whose loss and gradients match torchvision's autograd.</summary>
public class TrainingTests(ITestOutputHelper log)
{
    static Dictionary<string, HostTensor> Feeds(TrainingArtifacts art, HostTensor input, long[] labels)
    {
        var feeds = new Dictionary<string, HostTensor> { ["input"] = input, ["labels"] = HostTensor.I64(labels, labels.Length) };
        foreach (var t in art.Parameters.Concat(art.Buffers)) feeds[t.Name] = HostTensor.FromTensor(t);
        return feeds;
    }

    [Fact]
    public void LossAndGradientsMatchTorchvision()
    {
        var model = VitBuilder.Build(VitParityTests.FixtureConfig, seed: 3);
        WeightLoader.Load(model, RepoPaths.Fixture("vit", "weights.safetensors"), VitModelProvider.HeadNames);
        var art = TrainingCompiler.Compile(model);
        log.WriteLine($"{art.Parameters.Count} parameters, {art.TrainingModel.Graph.Nodes.Count} training nodes, compiled in {art.CompileTime.TotalMilliseconds:F0} ms");
        var io = SafetensorsReader.Open(RepoPaths.Fixture("vit", "io.safetensors"));
        var grads = SafetensorsReader.Open(RepoPaths.Fixture("vit", "grads.safetensors"));
        Assert.Equal(grads.Tensors.Keys.OrderBy(x => x), art.Parameters.Select(p => p.Name).OrderBy(x => x));
        var input = HostTensor.F32(io.ReadFloats("input").Select(x => (double)x).ToArray(), io.Get("input").Shape);
        var labelBytes = io.ReadBytes(io.Get("labels"));
        var labels = Enumerable.Range(0, labelBytes.Length / 8).Select(i => BitConverter.ToInt64(labelBytes, 8 * i)).ToArray();

        using var runner = new OrtRunner(art.TrainingModel);
        var outs = runner.Run(Feeds(art, input, labels));
        double torchLoss = io.ReadFloats("loss")[0], ours = outs["loss"].Values[0];
        log.WriteLine($"loss ours {ours:G9} torch {torchLoss:G9}");
        Assert.True(Math.Abs(ours - torchLoss) <= 1e-4 * Math.Abs(torchLoss));
        double worst = 0;
        foreach (var p in art.Parameters)
        {
            var err = RelErr(outs[p.Name + "_grad"].Values, grads.ReadFloats(p.Name).Select(x => (double)x).ToArray());
            worst = Math.Max(worst, err);
            Assert.True(err <= 1e-4, $"gradient of '{p.Name}': relative error {err:E3}");
        }
        log.WriteLine($"worst gradient relative error {worst:E2}");
    }

    /// <summary>
    /// Ten AdamW steps from torchvision's weights on the batch of the side-by-side benchmark (the formula of
    /// bench/peers/torch_vit.py) give PyTorch's losses (tools/reference/make_trajectory_fixture.py): the
    /// forward, the gradients, the parameter groups and the optimizer agree over a whole trajectory.
    /// </summary>
    [Fact]
    public void TenAdamWStepsFollowPyTorchsTrajectory()
    {
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture("vit", "trajectory.json")));
        var j = json.RootElement;
        var torch = j.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        int batch = j.GetProperty("batch").GetInt32();
        var model = VitBuilder.Build(VitParityTests.FixtureConfig, seed: 3);
        WeightLoader.Load(model, RepoPaths.Fixture("vit", "weights.safetensors"), VitModelProvider.HeadNames);
        var art = TrainingCompiler.Compile(model, new CompileOptions { GradientAccumulation = true });
        var optimizer = OptimizerBuilder.Build(art.Parameters, new OptimizerOptions
        {
            Type = "adamw", WeightDecay = j.GetProperty("weight_decay").GetDouble(), Eps = j.GetProperty("eps").GetDouble(),
            Beta1 = j.GetProperty("betas")[0].GetDouble(), Beta2 = j.GetProperty("betas")[1].GetDouble(),
        });
        using var trainer = new Trainer(art.TrainingModel, art.EvalModel, optimizer, art.Parameters, art.Buffers);
        trainer.SetLearningRate((float)j.GetProperty("lr").GetDouble());
        int size = VitParityTests.FixtureConfig.ImageSize;
        var pixels = Enumerable.Range(0, batch * 3 * size * size).Select(n => (float)Math.Sin(0.37 * n)).ToArray();
        var labels = Enumerable.Range(0, batch).Select(b => (31L * b + 7) % 10).ToArray();
        using var x = OrtValue.CreateTensorValueFromMemory(pixels, [batch, 3, size, size]);
        using var y = OrtValue.CreateTensorValueFromMemory(labels, [batch]);
        for (int step = 0; step < torch.Length; step++)
        {
            trainer.LazyResetGrad();
            double loss = trainer.TrainStep([x], y).Loss;
            Assert.True(trainer.OptimizerStep().AllFinite);
            double err = Math.Abs(loss - torch[step]) / torch[step];
            log.WriteLine($"step {step + 1}: ours {loss:F6} torch {torch[step]:F6} rel diff {err:E1}");
            Assert.True(err <= 1e-4, $"step {step + 1}: loss {loss} vs PyTorch {torch[step]}");
        }
    }

    [Theory]
    [InlineData("vit-tiny")]
    [InlineData("vit-small")]
    public void PresetCompilesAndTrains(string arch)
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = arch, NumClasses = 10, Seed = 7 });
        log.WriteLine(def.Description);
        var art = TrainingCompiler.Compile(def.Forward);
        Assert.Equal(def.Forward.Graph.Initializers.Values.Count(t => t.Type == DataType.Float), art.Parameters.Count);
        log.WriteLine($"{arch}: {art.Parameters.Count} parameter tensors, {art.TrainingModel.Graph.Nodes.Count} training nodes, compiled in {art.CompileTime.TotalMilliseconds:F0} ms");

        const int batch = 16;
        var rng = new Random(1);
        var input = HostTensor.F32(Enumerable.Range(0, batch * 3 * def.ImageSize * def.ImageSize).Select(_ => rng.NextDouble() * 2 - 1).ToArray(), batch, 3, def.ImageSize, def.ImageSize);
        var labels = Enumerable.Range(0, batch).Select(i => (long)(i % 10)).ToArray();
        var feeds = Feeds(art, input, labels);
        using var runner = new OrtRunner(art.TrainingModel);
        var outs = runner.Run(feeds);
        // torchvision's zero head gives zero logits: the loss is exactly ln(classes).
        Assert.Equal(Math.Log(10), outs["loss"].Values[0], 5);
        Assert.Contains(outs["heads.head.weight_grad"].Values, v => v != 0);
        foreach (var p in art.Parameters) Assert.All(outs[p.Name + "_grad"].Values, v => Assert.True(double.IsFinite(v)));

        var sw = Stopwatch.StartNew();
        const int steps = 3;
        for (int i = 0; i < steps; i++) runner.Run(feeds, ["loss"]);
        var ms = sw.Elapsed.TotalMilliseconds / steps;
        log.WriteLine($"{arch}: forward+backward {ms:F1} ms per batch of {batch} = {ms / batch:F2} ms per image (2 threads)");
    }

    [Fact]
    public void BuiltForwardPassesOrtShapeChecksWithDynamicBatch()
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 7, ImageSize = 48 });
        Assert.Equal(48, def.ImageSize);
        Assert.Equal("N", def.Forward.Graph.Inputs[0].Type.Shape![0].Symbol);
        using var runner = new OrtRunner(def.Forward);
        foreach (int n in new[] { 1, 3 })
        {
            var x = HostTensor.F32(new double[n * 3 * 48 * 48], n, 3, 48, 48);
            Assert.Equal([n, 7L], runner.Run(new Dictionary<string, HostTensor> { ["input"] = x })["logits"].Shape);
        }
    }
}
