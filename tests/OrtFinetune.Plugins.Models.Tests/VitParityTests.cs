using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>
/// The built ViT against torchvision 0.14's eval-mode logits (fixtures from tools/reference/make_vit_fixtures.py):
/// same settings, weights loaded from the safetensors state_dict.
/// </summary>
public class VitParityTests(ITestOutputHelper log)
{
    /// <summary>The fixture's architecture (tests/fixtures/vit/config.json).</summary>
    public static readonly VitConfig FixtureConfig = new() { ImageSize = 32, PatchSize = 8, Layers = 2, Heads = 3, Hidden = 48, MlpDim = 96, NumClasses = 10 };

    static string WeightsPath => RepoPaths.Fixture("vit", "weights.safetensors");

    static (HostTensor Input, double[] Logits) Io()
    {
        var io = SafetensorsReader.Open(RepoPaths.Fixture("vit", "io.safetensors"));
        var input = io.Get("input");
        return (HostTensor.F32(io.ReadFloats("input").Select(x => (double)x).ToArray(), input.Shape), io.ReadFloats("logits").Select(x => (double)x).ToArray());
    }

    double[] Run(Model m, HostTensor input, bool optimize)
    {
        using var runner = new OrtRunner(m, optimize);
        var outs = runner.Run(new Dictionary<string, HostTensor> { ["input"] = input });
        Assert.Equal([input.Shape[0], 10L], outs["logits"].Shape);
        return outs["logits"].Values;
    }

    [Theory]
    [InlineData(PatchEmbedding.MatMul, true)]
    [InlineData(PatchEmbedding.MatMul, false)]
    [InlineData(PatchEmbedding.Conv, true)]
    public void LogitsMatchTorchvision(PatchEmbedding patch, bool optimize)
    {
        var model = VitBuilder.Build(FixtureConfig with { PatchEmbedding = patch }, seed: 1);
        var report = WeightLoader.Load(model, WeightsPath, VitModelProvider.HeadNames);
        Assert.Equal(32, report.Loaded);
        Assert.Empty(report.Skipped);
        var (input, torch) = Io();
        var ours = Run(model, input, optimize);
        var err = RelErr(ours, torch);
        log.WriteLine($"{patch}, optimize={optimize}: relative error {err:E2}, max abs diff {ours.Zip(torch, (a, b) => Math.Abs(a - b)).Max():E2}");
        Assert.True(err <= 1e-4, $"relative error {err:E3}");
    }

    [Fact]
    public void MatMulAndConvPatchEmbeddingsAgree()
    {
        var (input, _) = Io();
        var a = VitBuilder.Build(FixtureConfig, seed: 5);
        var b = VitBuilder.Build(FixtureConfig with { PatchEmbedding = PatchEmbedding.Conv }, seed: 5);
        Assert.DoesNotContain(a.Graph.Nodes, n => n.OpType == "Conv");
        Assert.Single(b.Graph.Nodes, n => n.OpType == "Conv");
        WeightLoader.Load(a, WeightsPath, VitModelProvider.HeadNames);
        WeightLoader.Load(b, WeightsPath, VitModelProvider.HeadNames);
        var err = RelErr(Run(a, input, false), Run(b, input, false));
        log.WriteLine($"MatMul vs Conv patch embedding: relative difference {err:E2}");
        Assert.True(err <= 1e-6, $"{err:E3}");
    }

    [Fact]
    public void HeadWithOtherClassCountIsSkippedWithANote()
    {
        var model = VitBuilder.Build(FixtureConfig with { NumClasses = 4 }, seed: 2);
        var freshHead = model.Graph.Initializers["heads.head.weight"];
        var report = WeightLoader.Load(model, WeightsPath, VitModelProvider.HeadNames);
        Assert.Equal(30, report.Loaded);
        Assert.Equal(["heads.head.weight", "heads.head.bias"], report.Skipped);
        Assert.Contains(report.Notes, n => n.Contains("heads.head.weight") && n.Contains("10 classes"));
        Assert.Same(freshHead, model.Graph.Initializers["heads.head.weight"]);
        var (input, _) = Io();
        using var runner = new OrtRunner(model);
        Assert.Equal([4L, 4L], runner.Run(new Dictionary<string, HostTensor> { ["input"] = input })["logits"].Shape);
    }

    [Fact]
    public void ShapeMismatchNamesTensorAndBothShapes()
    {
        var model = VitBuilder.Build(FixtureConfig with { Channels = 1 }, seed: 2);
        var e = Assert.Throws<ModelException>(() => WeightLoader.Load(model, WeightsPath, VitModelProvider.HeadNames));
        log.WriteLine(e.Message);
        Assert.Contains(WeightsPath, e.Message);
        Assert.Contains("[48, 3, 8, 8]", e.Message);
        Assert.Contains("[48, 1, 8, 8]", e.Message);
        Assert.Contains("conv_proj.weight", e.Message);
    }

    [Fact]
    public void PositionEmbeddingMismatchMentionsImageSize()
    {
        var model = VitBuilder.Build(FixtureConfig with { ImageSize = 64 }, seed: 2);
        var e = Assert.Throws<ModelException>(() => WeightLoader.Load(model, WeightsPath, VitModelProvider.HeadNames));
        Assert.Contains("encoder.pos_embedding", e.Message);
        Assert.Contains("image size", e.Message);
    }
}
