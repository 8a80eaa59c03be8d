using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using OrtFinetune.Training.Compiler;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

public sealed class ProviderTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-models-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static string VitSmallOnnx => RepoPaths.Fixture("autodiff", "vit_small", "model.onnx");

    [Theory]
    [InlineData("vit-b16", 1000, 86_567_656L)]
    [InlineData("vit-l16", 1000, 304_326_632L)]
    public void TorchvisionSizedModelsHaveTorchvisionParameterCounts(string arch, int classes, long expected)
    {
        var (_, config) = VitModelProvider.Resolve(new ModelRequest { Architecture = arch, NumClasses = classes });
        Assert.Equal(expected, config.ParameterCount);
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = arch, NumClasses = classes, Seed = 1 });
        Assert.Equal(expected, VitBuilder.CountParameters(def.Forward));
        Assert.Equal(224, def.ImageSize);
        Assert.Equal([0.485f, 0.456f, 0.406f], def.Mean);
        Assert.Equal("heads.head.weight", def.Forward.Graph.Nodes[^1].Input(1));
        log.WriteLine(def.Description);
    }

    [Fact]
    public void ParameterCountFormulaMatchesBuiltGraphs()
    {
        foreach (var p in VitPresets.All.Where(p => p.Config.Hidden <= 192))
        {
            var c = p.Config with { NumClasses = 10 };
            Assert.Equal(c.ParameterCount, VitBuilder.CountParameters(VitBuilder.Build(c)));
        }
        Assert.Equal(632_045_800L, VitPresets.Find("vit-h14")!.Config.ParameterCount);   // torchvision vit_h_14 at 224
    }

    [Fact]
    public void InitializationFollowsTorchvision()
    {
        var m = VitBuilder.Build(new VitConfig { ImageSize = 32, PatchSize = 4, Layers = 1, Heads = 3, Hidden = 96, MlpDim = 384, NumClasses = 10 }, seed: 11);
        var g = m.Graph.Initializers;
        double Std(string n) { var v = g[n].ToDoubles(); var mean = v.Average(); return Math.Sqrt(v.Select(x => (x - mean) * (x - mean)).Average()); }
        Assert.All(g["class_token"].ToDoubles(), v => Assert.Equal(0, v));
        Assert.All(g["heads.head.weight"].ToDoubles(), v => Assert.Equal(0, v));
        Assert.All(g["heads.head.bias"].ToDoubles(), v => Assert.Equal(0, v));
        Assert.All(g["encoder.layers.encoder_layer_0.ln_1.weight"].ToDoubles(), v => Assert.Equal(1, v));
        Assert.InRange(Std("encoder.pos_embedding"), 0.018, 0.022);
        Assert.InRange(Std("conv_proj.weight"), 0.9 / Math.Sqrt(48), 1.1 / Math.Sqrt(48));
        double xavier = Math.Sqrt(6.0 / (96 + 288));
        Assert.All(g["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"].ToDoubles(), v => Assert.InRange(v, -xavier, xavier));
        Assert.InRange(Std("encoder.layers.encoder_layer_0.self_attention.in_proj_weight"), 0.9 * xavier / Math.Sqrt(3), 1.1 * xavier / Math.Sqrt(3));
        Assert.InRange(Std("encoder.layers.encoder_layer_0.mlp.0.bias"), 1e-7, 1e-5);
        // Seeded: same seed, same weights; another seed, other weights.
        var again = VitBuilder.Build(new VitConfig { ImageSize = 32, PatchSize = 4, Layers = 1, Heads = 3, Hidden = 96, MlpDim = 384, NumClasses = 10 }, seed: 11);
        Assert.Equal(g["conv_proj.weight"].RawData.ToArray(), again.Graph.Initializers["conv_proj.weight"].RawData.ToArray());
        var other = VitBuilder.Build(new VitConfig { ImageSize = 32, PatchSize = 4, Layers = 1, Heads = 3, Hidden = 96, MlpDim = 384, NumClasses = 10 }, seed: 12);
        Assert.NotEqual(g["conv_proj.weight"].RawData.ToArray(), other.Graph.Initializers["conv_proj.weight"].RawData.ToArray());
    }

    [Fact]
    public void OpsAreTheTrainingFriendlySet()
    {
        var m = VitBuilder.Build(VitParityTests.FixtureConfig);
        var ops = m.Graph.Nodes.Select(n => n.OpType).ToHashSet();
        Assert.DoesNotContain("Dropout", ops);
        Assert.DoesNotContain("Gelu", ops);
        Assert.DoesNotContain("Conv", ops);
        Assert.Contains("Erf", ops);
        Assert.Equal(2 * 2 + 1, m.Graph.Nodes.Count(n => n.OpType == "LayerNormalization"));
        Assert.All(m.Graph.Nodes.Where(n => n.OpType == "LayerNormalization"), n => Assert.Equal(1e-6f, n.GetFloat("epsilon", 0)));
        Assert.Equal(17, m.OpsetOf(""));
        log.WriteLine(string.Join(", ", m.Graph.Nodes.GroupBy(n => n.OpType).Select(g => $"{g.Key}x{g.Count()}")));
    }

    [Fact]
    public void VitProviderTellsInputSizesBeforeBuilding()
    {
        IModelProvider p = new VitModelProvider();
        Assert.Equal(new ModelInputSize(32, 4), p.InputSize("vit-tiny"));
        Assert.Equal(new ModelInputSize(224, 16), p.InputSize("VIT-B16"));
        Assert.Equal(new ModelInputSize(224, 14), p.InputSize("vit-h14"));
        Assert.Null(p.InputSize("auto"));            // the weights decide
        Assert.Null(p.InputSize("vit-x"));
        Assert.Null(((IModelProvider)new OnnxModelProvider()).InputSize("onnx"));   // the file decides
    }

    [Fact]
    public void VitProviderErrors()
    {
        var p = new VitModelProvider();
        Assert.Contains("vit-tiny", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "vit-x", NumClasses = 3 })).Message);
        Assert.Contains("multiple of the patch size", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 3, ImageSize = 30 })).Message);
        Assert.Contains("classes", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 0 })).Message);
        var e = Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 3, WeightsPath = RepoPaths.Fixture("vit", "weights.safetensors") }));
        Assert.Contains("weights.safetensors", e.Message);
    }

    [Fact]
    public void VitProviderLoadsWeightsAndReplacesHead()
    {
        // Write the fixture weights under a vit-tiny-shaped file? Instead: save a built vit-tiny's weights and reload them at 4 classes.
        var src = VitBuilder.Build(VitPresets.Find("vit-tiny")!.Config with { NumClasses = 10 }, seed: 21);
        var path = Path.Combine(_dir, "tiny.safetensors");
        File.WriteAllBytes(path, SafetensorsWriter.Build(src.Graph.Initializers.Values.Where(t => t.Type == DataType.Float)
            .Select(t => new SafetensorsWriter.Item(t.Name, "F32", t.Dims, t.RawData.ToArray()))));
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 4, Seed = 99, WeightsPath = path });
        log.WriteLine(def.Description);
        Assert.Contains("54 tensors", def.Description);
        Assert.Contains("10 classes", def.Description);
        var g = def.Forward.Graph.Initializers;
        Assert.Equal(src.Graph.Initializers["encoder.pos_embedding"].RawData.ToArray(), g["encoder.pos_embedding"].RawData.ToArray());
        Assert.Equal([4L, 96], g["heads.head.weight"].Dims);
        Assert.Equal([0.5f, 0.5f, 0.5f], def.Std);
    }

    [Fact]
    public void OnnxImportReplacesHeadCompilesAndRuns()
    {
        var def = new OnnxModelProvider().Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = VitSmallOnnx, Seed = 3 });
        log.WriteLine(def.Description);
        var g = def.Forward.Graph;
        Assert.Equal([4L, 32], g.Initializers["heads.head.weight"].Dims);
        Assert.Equal([4L], g.Initializers["heads.head.bias"].Dims);
        Assert.Equal("logits", g.Outputs[0].Name);
        Assert.Equal("4", g.Outputs[0].Type.Shape![1].ToString());
        Assert.Equal(32, def.ImageSize);
        Assert.Equal(3, def.Channels);
        Assert.Equal("input", def.InputName);
        double bound = 1 / Math.Sqrt(32);
        Assert.All(g.Initializers["heads.head.weight"].ToDoubles(), v => Assert.InRange(v, -bound, bound));

        var art = TrainingCompiler.Compile(def.Forward);
        var rng = new Random(5);
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input"] = HostTensor.F32(Enumerable.Range(0, 4 * 3 * 32 * 32).Select(_ => rng.NextDouble()).ToArray(), 4, 3, 32, 32),
            ["labels"] = HostTensor.I64([0, 1, 2, 3], 4),
        };
        foreach (var t in art.Parameters.Concat(art.Buffers)) feeds[t.Name] = HostTensor.FromTensor(t);
        using var runner = new OrtRunner(art.TrainingModel);
        var outs = runner.Run(feeds);
        Assert.Equal([4L, 4L], outs["logits"].Shape);
        Assert.Equal([4L, 32L], outs["heads.head.weight_grad"].Shape);
        Assert.True(double.IsFinite(outs["loss"].Values[0]));
        log.WriteLine($"loss {outs["loss"].Values[0]:F4}");

        using var eval = new OrtRunner(def.Forward);
        Assert.Equal([4L, 4L], eval.Run(new Dictionary<string, HostTensor> { ["input"] = feeds["input"] })["logits"].Shape);
    }

    [Fact]
    public void OnnxImportWithMatMulAddHeadAndDynamicBatch()
    {
        // Our own ViT with its Gemm head rewritten as MatMul(x, W^T) + b, saved and re-imported.
        var m = VitBuilder.Build(VitParityTests.FixtureConfig);
        var g = m.Graph;
        var gemm = g.Nodes[^1];
        var w = g.Initializers["heads.head.weight"];
        var wt = new float[w.ElementCount];
        var src = w.ToFloats();
        for (int i = 0; i < 10; i++) for (int j = 0; j < 48; j++) wt[j * 10 + i] = src[i * 48 + j] + 0.1f;
        g.Initializers["heads.head.weight"] = Tensor.Float("heads.head.weight", wt, 48, 10);
        g.Nodes.RemoveAt(g.Nodes.Count - 1);
        g.Nodes.Add(new Node("MatMul", [gemm.Input(0), "heads.head.weight"], ["head_mm"], "head_mm"));
        g.Nodes.Add(new Node("Add", ["heads.head.bias", "head_mm"], ["logits"], "head_add"));
        var path = Path.Combine(_dir, "mm.onnx");
        ModelIO.Save(m, path);

        var def = new OnnxModelProvider().Create(new ModelRequest { Architecture = "onnx", NumClasses = 6, ModelPath = path, ImageSize = 32 });
        Assert.Equal([48L, 6], def.Forward.Graph.Initializers["heads.head.weight"].Dims);
        Assert.Equal([6L], def.Forward.Graph.Initializers["heads.head.bias"].Dims);
        var art = TrainingCompiler.Compile(def.Forward);
        Assert.Contains(art.Parameters, p => p.Name == "heads.head.weight" && p.Dims[1] == 6);
        using var runner = new OrtRunner(def.Forward);
        Assert.Equal([2L, 6L], runner.Run(new Dictionary<string, HostTensor> { ["input"] = HostTensor.F32(new double[2 * 3 * 32 * 32], 2, 3, 32, 32) })["logits"].Shape);
    }

    [Fact]
    public void OnnxImportErrors()
    {
        var p = new OnnxModelProvider();
        Assert.Contains("ModelPath", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4 })).Message);
        var missing = Path.Combine(_dir, "none.onnx");
        Assert.Contains(missing, Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = missing })).Message);
        var junk = Path.Combine(_dir, "junk.onnx");
        File.WriteAllBytes(junk, [1, 2, 3, 4, 5, 6, 7]);
        Assert.Contains(junk, Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = junk })).Message);
        Assert.Contains("channels", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = VitSmallOnnx, Channels = 1 })).Message);
        Assert.Contains("image size 64", Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = VitSmallOnnx, ImageSize = 64 })).Message);

        // A model whose logits come from a Softmax after the head: no head found.
        var m = VitBuilder.Build(VitParityTests.FixtureConfig);
        var last = m.Graph.Nodes[^1];
        last.Outputs[0] = "pre";
        m.Graph.Nodes.Add(new Node("Relu", ["pre"], ["logits"], "relu"));
        var path = Path.Combine(_dir, "nohead.onnx");
        ModelIO.Save(m, path);
        var e = Assert.Throws<ModelException>(() => p.Create(new ModelRequest { Architecture = "onnx", NumClasses = 4, ModelPath = path, ImageSize = 32 }));
        log.WriteLine(e.Message);
        Assert.Contains("head", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void PluginRegistersBothProviders()
    {
        var services = new ServiceCollection();
        var plugin = new ModelsPlugin();
        plugin.Configure(services);
        Assert.Equal("OrtFinetune.Plugins.Models", plugin.Name);
        var providers = services.Where(s => s.ServiceType == typeof(IModelProvider)).Select(s => s.ImplementationType).ToList();
        Assert.Equal([typeof(VitModelProvider), typeof(OnnxModelProvider)], providers);
        Assert.All(services, s => Assert.Equal(ServiceLifetime.Singleton, s.Lifetime));
        Assert.Contains("vit-b16", new VitModelProvider().Architectures);
        Assert.Equal(["onnx"], new OnnxModelProvider().Architectures);
    }
}
