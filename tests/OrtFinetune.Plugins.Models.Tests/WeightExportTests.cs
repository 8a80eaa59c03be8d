using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Plugins.Models.Weights;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>
/// Export to safetensors in each naming and back: the written names are the ones the fixtures were made with
/// (whose load_state_dict into torchvision tools/reference/make_weight_fixtures.py checks), and re-reading
/// them gives our model's logits.
/// </summary>
public sealed class WeightExportTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-export-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    [Theory]
    [InlineData("torchvision", "torchvision")]
    [InlineData("hf", "hf")]
    [InlineData("timm", "timm")]
    public void ExportWritesTheFixtureNamesAndValues(string naming, string fixture)
    {
        var (model, _, _) = WeightImportTests.LoadFolder(WeightImportTests.Fixture(fixture));
        var path = Path.Combine(_dir, naming, "model.safetensors");
        var summary = new WeightExport().Export(model, path, naming);
        log.WriteLine(summary);
        var ours = SafetensorsReader.Open(path);
        var theirs = SafetensorsReader.Open(WeightImportTests.Fixture(fixture, "model.safetensors"));
        Assert.Equal(theirs.Tensors.Keys.Order(), ours.Tensors.Keys.Order());
        foreach (var (k, e) in theirs.Tensors)
        {
            Assert.Equal(e.Shape, ours.Tensors[k].Shape);
            Assert.Equal(theirs.ReadBytes(e), ours.ReadBytes(ours.Tensors[k]));
        }
        if (naming == "hf")
        {
            var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, naming, "config.json")))!;
            Assert.Equal(2, (int)cfg["num_attention_heads"]!);
            Assert.Equal(1e-12, (double)cfg["layer_norm_eps"]!, 1e-18);
            Assert.Equal(48, (int)cfg["intermediate_size"]!);
        }
    }

    /// <summary>
    /// Train 5 steps (SGD on the compiled training graph), export the inference model's weights in each naming,
    /// load them back into a fresh model (HF: with the config.json written next to them): same logits as the
    /// trained ONNX model.
    /// </summary>
    [Fact]
    public void TrainedWeightsRoundTripInEveryNaming()
    {
        var (model, _, _) = WeightImportTests.LoadFolder(WeightImportTests.Fixture("torchvision"), classes: 3);
        var art = TrainingCompiler.Compile(model);
        var input = WeightImportTests.Input();
        var labels = HostTensor.I64([0, 2, 1], 3);
        var weights = art.Parameters.ToDictionary(p => p.Name, p => p.ToFloats());
        using (var runner = new OrtRunner(art.TrainingModel))
            for (int step = 0; step < 5; step++)
            {
                var feeds = new Dictionary<string, HostTensor> { ["input"] = input, ["labels"] = labels };
                foreach (var p in art.Parameters) feeds[p.Name] = HostTensor.F32(weights[p.Name].Select(x => (double)x).ToArray(), p.Dims);
                var outs = runner.Run(feeds);
                log.WriteLine($"step {step}: loss {outs["loss"].Values[0]:F5}");
                foreach (var p in art.Parameters)
                {
                    var g = outs[p.Name + "_grad"].Values;
                    var w = weights[p.Name];
                    for (int i = 0; i < w.Length; i++) w[i] -= (float)(0.5 * g[i]);
                }
            }
        var trained = model.Clone();
        foreach (var p in art.Parameters) trained.Graph.Initializers[p.Name] = Tensor.Float(p.Name, weights[p.Name], p.Dims);
        var onnxLogits = WeightImportTests.Logits(trained, input);
        Assert.NotEqual(WeightImportTests.Logits(model, input), onnxLogits);

        foreach (var naming in new[] { "torchvision", "hf", "timm" })
        {
            var dir = Path.Combine(_dir, "trained-" + naming);
            new WeightExport().Export(trained, Path.Combine(dir, "model.safetensors"), naming);
            var (back, config, report) = WeightImportTests.LoadFolder(dir, classes: 3);
            Assert.Equal(naming, NameMap.Name(report.Naming));
            Assert.Equal(32, report.Loaded.Count);
            foreach (var p in art.Parameters)
                Assert.Equal(trained.Graph.Initializers[p.Name].RawData.ToArray(), back.Graph.Initializers[p.Name].RawData.ToArray());
            var err = RelErr(WeightImportTests.Logits(back, input), onnxLogits);
            log.WriteLine($"{naming}: relative difference {err:E2}");
            Assert.True(err <= 1e-5, $"{naming}: {err:E3}");
        }
    }

    [Fact]
    public void ExportOfANonVitModelIsAClearError()
    {
        var m = OnnxImport.Load(RepoPaths.Fixture("autodiff", "mlp", "model.onnx"));
        var path = Path.Combine(_dir, "x.safetensors");
        var e = Assert.Throws<ModelException>(() => new WeightExport().Export(m, path, "torchvision"));
        Assert.Contains("not a ViT", e.Message);
        Assert.Contains("unknown weight naming", Assert.Throws<ModelException>(() => new WeightExport().Export(m, path, "onnx")).Message);
    }
}
