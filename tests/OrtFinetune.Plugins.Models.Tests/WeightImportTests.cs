using System.Text.Json.Nodes;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Plugins.Models.Weights;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>
/// Checkpoints in torchvision, Hugging Face and timm naming (tests/fixtures/weights, from
/// tools/reference/make_weight_fixtures.py: one torchvision ViT with random weights written under each
/// library's names), sharded and not, float32 and float16: our logits against torchvision's.
/// </summary>
public sealed class WeightImportTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-weights-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    internal static string Fixture(params string[] parts) => RepoPaths.Fixture(["weights", .. parts]);
    const int Classes = 5, Heads = 2;

    static readonly Lazy<SafetensorsFile> Io = new(() => SafetensorsReader.Open(Fixture("io.safetensors")));

    internal static HostTensor Input(string name = "input")
    {
        var e = Io.Value.Get(name);
        return HostTensor.F32(Io.Value.ReadFloats(name).Select(x => (double)x).ToArray(), e.Shape);
    }

    internal static double[] Reference(string name) => Io.Value.ReadFloats(name).Select(x => (double)x).ToArray();

    internal static double[] Logits(Model m, HostTensor input)
    {
        using var runner = new OrtRunner(m);
        return runner.Run(new Dictionary<string, HostTensor> { ["input"] = input })["logits"].Values;
    }

    /// <summary>Builds our ViT for a checkpoint folder and loads it (the provider's path, without the presets).</summary>
    internal static (Model Model, VitConfig Config, CheckpointLoadReport Report) LoadFolder(string path, string? format = null, int imageSize = 0, int classes = Classes)
    {
        var ckpt = Checkpoint.Open(path);
        var (map, source) = CheckpointImport.ResolveNaming(ckpt, format);
        var arch = CheckpointImport.Architecture(ckpt, map);
        if (arch.Heads == null) arch = arch with { Heads = Heads };   // torchvision checkpoints carry no config.json
        var config = arch.ToConfig(classes, imageSize, 3, []);
        var model = VitBuilder.Build(config, seed: 7);
        return (model, config, CheckpointImport.Load(model, config, ckpt, map, source));
    }

    public static TheoryData<string, string, bool, bool> Variants()
    {
        var d = new TheoryData<string, string, bool, bool>();
        foreach (var naming in new[] { "torchvision", "hf", "timm" })
            foreach (var sharded in new[] { false, true })
                foreach (var fp16 in new[] { false, true })
                    d.Add(naming + (sharded ? "-sharded" : "") + (fp16 ? "-fp16" : ""), naming, sharded, fp16);
        return d;
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void LogitsEqualTorchvisionForEachNaming(string folder, string naming, bool sharded, bool fp16)
    {
        var (model, config, report) = LoadFolder(Fixture(folder));
        log.WriteLine(report.Summary);
        Assert.Equal(naming, NameMap.Name(report.Naming));
        Assert.Equal(32, report.Loaded.Count);
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
        Assert.Empty(report.Reshaped);
        Assert.Equal(fp16 ? "F16" : "F32", Assert.Single(report.SourceDTypes).Key);
        Assert.Equal(sharded ? 2 : 1, Checkpoint.Open(Fixture(folder)).Files.Count);
        // The source's LayerNorm epsilon is kept in the graph (HF: 1e-12; its effect on these logits is ~5e-5 relative, above the tolerance).
        float eps = naming == "hf" ? 1e-12f : 1e-6f;
        Assert.Equal(eps, config.LayerNormEpsilon);
        Assert.All(model.Graph.Nodes.Where(n => n.OpType == "LayerNormalization"), n => Assert.Equal(eps, n.GetFloat("epsilon", 0)));

        // fp16 files: the reference ran torchvision on the same weights rounded to float16, so only float32 rounding remains.
        var reference = Reference("logits" + (naming == "hf" ? "_hf" : "") + (fp16 ? "_fp16" : ""));
        var ours = Logits(model, Input());
        var err = RelErr(ours, reference);
        log.WriteLine($"{folder}: relative error {err:E2}");
        Assert.True(err <= 1e-5, $"{folder}: relative error {err:E3}");
        if (fp16)   // and against the float32 original: within float16 rounding of the weights
            Assert.True(RelErr(ours, Reference("logits" + (naming == "hf" ? "_hf" : ""))) <= 5e-3);
    }

    [Fact]
    public void BFloat16CheckpointIsReadExactly()
    {
        var (model, _, report) = LoadFolder(Fixture("hf-bf16"));
        Assert.Equal("BF16", Assert.Single(report.SourceDTypes).Key);
        var err = RelErr(Logits(model, Input()), Reference("logits_hf_bf16"));
        log.WriteLine($"hf-bf16: relative error {err:E2}");
        Assert.True(err <= 1e-5, $"{err:E3}");
    }

    [Theory]
    [InlineData("torchvision", "torchvision")]
    [InlineData("hf-sharded", "hf")]
    [InlineData("timm-fp16", "timm")]
    [InlineData("hf-vitmodel", "hf")]
    public void NamingIsDetectedFromTheKeys(string folder, string naming)
    {
        var (map, source) = CheckpointImport.ResolveNaming(Checkpoint.Open(Fixture(folder)), null);
        Assert.Equal(naming, NameMap.Name(map.Naming));
        Assert.Contains("detected", source);
    }

    [Fact]
    public void ForcedNamingThatDoesNotFitIsAClearError()
    {
        var e = Assert.Throws<ModelException>(() => LoadFolder(Fixture("hf"), format: "timm"));
        log.WriteLine(e.Message);
        Assert.Contains("patch_embed.proj.weight", e.Message);
        Assert.Contains(Fixture("hf"), e.Message);
        var (_, _, report) = LoadFolder(Fixture("hf"), format: "hf");
        Assert.Contains("--weights-format", report.NamingSource);
        Assert.Contains("unknown weight naming", Assert.Throws<ModelException>(() => LoadFolder(Fixture("hf"), format: "keras")).Message);
    }

    [Fact]
    public void AutoModelFromHfConfigAndReportListsEverything()
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = "auto", NumClasses = Classes, WeightsPath = Fixture("hf-sharded", "model.safetensors.index.json") });
        log.WriteLine(def.Description);
        log.WriteLine(def.WeightsReport);
        Assert.Equal(16, def.ImageSize);
        Assert.Equal([0.5f, 0.5f, 0.5f], def.Mean);
        Assert.Contains("loaded (32)", def.WeightsReport);
        Assert.Contains("missing (0)", def.WeightsReport);
        Assert.Contains("encoder.layers.encoder_layer_1.self_attention.in_proj_weight <- 'vit.encoder.layer.1.attention.attention.query.weight'", def.WeightsReport);
        Assert.Contains("config.json", def.WeightsReport);
        var err = RelErr(Logits(def.Forward, Input()), Reference("logits_hf"));
        Assert.True(err <= 1e-5, $"{err:E3}");
    }

    [Fact]
    public void HfViTModelLoadsWithFreshHeadAndReportsThePooler()
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = "auto", NumClasses = 3, WeightsPath = Fixture("hf-vitmodel") });
        log.WriteLine(def.WeightsReport);
        Assert.Contains("loaded (30)", def.WeightsReport);
        Assert.Contains("missing (2)", def.WeightsReport);
        Assert.Contains("unexpected (2)", def.WeightsReport);
        Assert.Contains("pooler.dense.weight", def.WeightsReport);
        Assert.Equal([3L, 32], def.Forward.Graph.Initializers[VitNames.HeadWeight].Dims);
        Assert.Equal(3 * 3, Logits(def.Forward, Input()).Length);
    }

    [Fact]
    public void PresetThatDoesNotFitTheWeightsIsAClearError()
    {
        var e = Assert.Throws<ModelException>(() => new VitModelProvider().Create(new ModelRequest { Architecture = "vit-tiny", NumClasses = 5, WeightsPath = Fixture("timm") }));
        log.WriteLine(e.Message);
        Assert.Contains("hidden 32 vs 96", e.Message);
        Assert.Contains("--model auto", e.Message);
    }

    [Fact]
    public void HeadOfAnotherClassCountIsReplacedAndReported()
    {
        var (model, _, report) = LoadFolder(Fixture("timm"), classes: 7);
        Assert.Equal(30, report.Loaded.Count);
        Assert.Equal(2, report.Reshaped.Count);
        Assert.Contains(report.Reshaped, r => r.Contains("head.weight") && r.Contains("5 classes") && r.Contains("model 7"));
        Assert.Equal([7L, 32], model.Graph.Initializers[VitNames.HeadWeight].Dims);
    }

    [Fact]
    public void LayerIdsFollowTheBeitRecipe()
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = "auto", NumClasses = Classes, WeightsPath = Fixture("timm") });
        Assert.Equal(2, def.NumLayers);
        Assert.Equal(def.Forward.Graph.Initializers.Values.Where(t => t.Type == DataType.Float).Select(t => t.Name).Order(), def.LayerIds!.Keys.Order());
        var scales = LayerDecay.Scales(def, 0.75)!;
        // lr scale = 0.75^(layers + 1 - layer id): embeddings 0.75^3, block 0 0.75^2, block 1 0.75, final norm and head 1.
        Assert.Equal(0.421875, scales["encoder.pos_embedding"], 12);
        Assert.Equal(0.421875, scales["conv_proj.weight"], 12);
        Assert.Equal(0.421875, scales["class_token"], 12);
        Assert.Equal(0.5625, scales["encoder.layers.encoder_layer_0.mlp.3.bias"], 12);
        Assert.Equal(0.75, scales["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"], 12);
        Assert.Equal(1.0, scales["encoder.ln.weight"], 12);
        Assert.Equal(1.0, scales["heads.head.bias"], 12);
    }

    // ---- position embeddings ----

    [Theory]
    [InlineData(6, "pos_grid6")]
    [InlineData(3, "pos_grid3")]
    public void PositionTableResampleEqualsTorchBicubic(int grid, string reference)
    {
        var pos = Checkpoint.Open(Fixture("torchvision")).Tensors[VitNames.PosEmbedding].ReadFloats();
        var ours = PositionEmbedding.Resample(pos, 32, 4, grid);
        var torch = Io.Value.ReadFloats(reference);
        Assert.Equal(torch.Length, ours.Length);
        double worst = ours.Zip(torch, (a, b) => Math.Abs(a - b)).Max();
        log.WriteLine($"grid 4 -> {grid}: max abs diff {worst:E2}");
        Assert.True(worst <= 1e-5, $"{worst:E3}");
        Assert.Equal(pos[..32], ours[..32]);   // class token kept
        Assert.Equal(pos, PositionEmbedding.Resample(pos, 32, 4, 4));
    }

    [Fact]
    public void OtherImageSizeResamplesThePositionTable()
    {
        var (model, config, report) = LoadFolder(Fixture("hf-fp16"), imageSize: 24);
        Assert.Contains(report.Reshaped, r => r.Contains("4x4 to a 6x6"));
        // The reference: torchvision at image 24 with the table resampled by torch, float32 weights, eps 1e-6.
        var (tv, _, _) = LoadFolder(Fixture("torchvision"), imageSize: 24);
        var err = RelErr(Logits(tv, Input("input24")), Reference("logits24"));
        log.WriteLine($"image 24: relative error {err:E2}");
        Assert.True(err <= 1e-5, $"{err:E3}");
        Assert.Equal(24, config.ImageSize);
        Assert.Equal(3 * Classes, Logits(model, Input("input24")).Length);
    }

    // ---- bad files ----

    string CopyFixture(string folder)
    {
        var dst = Path.Combine(_dir, folder);
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.GetFiles(Fixture(folder))) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        return dst;
    }

    ModelException Bad(string path, params string[] expected)
    {
        var e = Assert.Throws<ModelException>(() => new VitModelProvider().Create(new ModelRequest { Architecture = "auto", NumClasses = Classes, WeightsPath = path }));
        log.WriteLine(e.Message);
        foreach (var x in expected) Assert.Contains(x, e.Message);
        return e;
    }

    [Fact]
    public void TruncatedShard()
    {
        var dir = CopyFixture("hf-sharded");
        var shard = Path.Combine(dir, "model-00002-of-00002.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..^100]);
        Bad(dir, shard, "tensor 'classifier.", "run past", "truncated");
    }

    [Fact]
    public void IndexNamingAMissingShard()
    {
        var dir = CopyFixture("timm-sharded");
        var index = Path.Combine(dir, Checkpoint.IndexName);
        var o = JsonNode.Parse(File.ReadAllText(index))!.AsObject();
        o["weight_map"]!["blocks.1.attn.qkv.weight"] = "model-00003-of-00002.safetensors";
        File.WriteAllText(index, o.ToJsonString());
        Bad(dir, index, "blocks.1.attn.qkv.weight", "model-00003-of-00002.safetensors", "does not exist");
    }

    [Fact]
    public void HeaderWithOverlappingOffsets()
    {
        var dir = CopyFixture("torchvision");
        var file = Path.Combine(dir, "model.safetensors");
        var src = SafetensorsReader.Open(file);
        var items = src.Tensors.Values.OrderBy(e => e.Begin).Select(e => new SafetensorsWriter.Item(e.Name, e.DType, e.Shape, src.ReadBytes(e))).ToList();
        // Re-point the second tensor's offsets into the first one's bytes.
        var header = new JsonObject();
        long offset = 0;
        foreach (var (it, i) in items.Select((it, i) => (it, i)))
        {
            long begin = i == 1 ? 0 : offset;
            header[it.Name] = new JsonObject { ["dtype"] = it.DType, ["shape"] = new JsonArray(it.Shape.Select(d => (JsonNode)d).ToArray()), ["data_offsets"] = new JsonArray(begin, begin + it.Data.Length) };
            if (i != 1) offset += it.Data.Length;
        }
        File.WriteAllBytes(file, SafetensorsWriter.Assemble(System.Text.Encoding.UTF8.GetBytes(header.ToJsonString()), items.Where((_, i) => i != 1).SelectMany(x => x.Data).ToArray()));
        Bad(file, file, items[1].Name, "overlaps");
    }

    [Fact]
    public void QueryWithoutKeyAndValue()
    {
        var dir = CopyFixture("hf");
        var file = Path.Combine(dir, "model.safetensors");
        var src = SafetensorsReader.Open(file);
        var items = src.Tensors.Values.OrderBy(e => e.Begin)
            .Where(e => !e.Name.StartsWith("vit.encoder.layer.1.attention.attention.key.") && !e.Name.StartsWith("vit.encoder.layer.1.attention.attention.value."))
            .Select(e => new SafetensorsWriter.Item(e.Name, e.DType, e.Shape, src.ReadBytes(e))).ToList();
        SafetensorsWriter.Write(file, items);
        Bad(dir, file, "'vit.encoder.layer.1.attention.attention.query.weight' has no matching", "attention.attention.key.weight", "attention.attention.value.weight");
    }

    [Fact]
    public void WrongShapeNamesTensorAndBothShapes()
    {
        var dir = CopyFixture("timm");
        var file = Path.Combine(dir, "model.safetensors");
        var src = SafetensorsReader.Open(file);
        var items = src.Tensors.Values.OrderBy(e => e.Begin).Select(e => e.Name == "blocks.0.norm2.weight"
            ? new SafetensorsWriter.Item(e.Name, "F32", [31], new byte[124])
            : new SafetensorsWriter.Item(e.Name, e.DType, e.Shape, src.ReadBytes(e))).ToList();
        SafetensorsWriter.Write(file, items);
        Bad(dir, file, "'blocks.0.norm2.weight' [31]", "encoder.layers.encoder_layer_0.ln_2.weight", "[32]");
    }

    [Fact]
    public void UnknownTensorIsAnError()
    {
        var dir = CopyFixture("timm");
        var file = Path.Combine(dir, "model.safetensors");
        var src = SafetensorsReader.Open(file);
        var items = src.Tensors.Values.OrderBy(e => e.Begin).Select(e => new SafetensorsWriter.Item(e.Name, e.DType, e.Shape, src.ReadBytes(e)))
            .Append(new SafetensorsWriter.Item("blocks.0.ls1.gamma", "F32", [32], new byte[128])).ToList();
        SafetensorsWriter.Write(file, items);
        Bad(dir, file, "'blocks.0.ls1.gamma' [32]", "not a parameter of a timm ViT");
    }

    [Fact]
    public void ConfigThatContradictsTheTensors()
    {
        var dir = CopyFixture("hf");
        var cfg = Path.Combine(dir, "config.json");
        var o = JsonNode.Parse(File.ReadAllText(cfg))!.AsObject();
        o["hidden_size"] = 64;
        File.WriteAllText(cfg, o.ToJsonString());
        Bad(dir, cfg, "hidden_size = 64", "hidden size 32");
    }

    [Fact]
    public void MissingPathAndUnnamedFolder()
    {
        Bad(Path.Combine(_dir, "nope"), "not found");
        Directory.CreateDirectory(Path.Combine(_dir, "empty"));
        Bad(Path.Combine(_dir, "empty"), "model.safetensors");
    }
}
