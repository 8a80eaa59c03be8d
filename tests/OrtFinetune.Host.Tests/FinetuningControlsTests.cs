using System.Diagnostics;
using OrtFinetune.Abstractions;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.Training;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// Issue 13's finetuning controls from the command line: --layer-decay (the optimizer's per-parameter learning
/// rates; the recipe itself is checked in Plugins.Models.Tests' LayerDecayRecipeTests) and --head-warmup-epochs
/// (head-only epochs first: the body and its optimizer state bit-identical, then everything trains; a resumed run
/// continues in the right phase). Tiny runs: vit-tiny at 16 px, 64 images, 4 steps per epoch.
/// </summary>
public sealed class FinetuningControlsTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-finetune-").FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    static readonly string[] Tiny = ["--dataset", "shapes", "--model", "vit-tiny", "--image-size", "16", "--limit", "64", "--batch-size", "16",
        "--schedule", "constant", "--warmup-steps", "0", "--lr", "0.001", "--log-every", "1"];
    static readonly string[] Head = ["heads.head.weight", "heads.head.bias"];

    (int Code, string Out, string Err) Run(params string[] args)
    {
        var clock = Stopwatch.StartNew();
        var psi = new ProcessStartInfo("dotnet", [TestPaths.HostDll, .. args, "--plugins-dir", TestPaths.BuiltInPlugins])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = _tmp };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(true); Assert.Fail($"ortfinetune {string.Join(' ', args)} ran past 3 minutes"); }
        p.WaitForExit();
        log.WriteLine($"$ ortfinetune {string.Join(' ', args)}  -> exit {p.ExitCode} in {clock.Elapsed.TotalSeconds:F1} s");
        var all = stdout.Result + stderr.Result;
        log.WriteLine(all.Length > 3000 ? all[^3000..] : all);
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    static bool IsHead(string tensor) => Head.Any(h => tensor == "param/" + h || tensor.StartsWith("optim/" + h + ".", StringComparison.Ordinal));

    [Theory]
    [InlineData("--layer-decay", "0", "Train:LayerDecay (--layer-decay) = '0': must be in (0, 1]")]
    [InlineData("--layer-decay", "1.5", "Train:LayerDecay (--layer-decay) = '1.5': must be in (0, 1]")]
    [InlineData("--head-warmup-epochs", "-1", "Train:HeadWarmupEpochs (--head-warmup-epochs) = '-1': must be >= 0")]
    [InlineData("--head-warmup-epochs", "one", "Train:HeadWarmupEpochs = 'one': not a valid integer")]
    public void BadValuesAreRefusedNamingTheOption(string option, string value, string message)
    {
        var (code, _, err) = Run("train", option, value);
        Assert.Equal(1, code);   // README: exit 1 = bad command line or settings
        Assert.Contains(message, err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void HeadWarmupTrainsTheHeadAloneThenEverythingAndResumesInPhase()
    {
        // Epoch 1 of 2 as its own run (a constant schedule, so it is the first epoch of the 2-epoch run), then resumed.
        var first = Run(["train", .. Tiny, "--epochs", "1", "--head-warmup-epochs", "1", "--layer-decay", "0.75", "--output", Path.Combine(_tmp, "a")]);
        Assert.True(first.Code == 0, first.Err);
        var logged = first.Out + first.Err;
        Assert.Contains("--head-warmup-epochs 1 >= --epochs 1: this run trains only the head", logged);
        Assert.Contains("layer-wise lr decay 0.75: multipliers 0.237 (embeddings) .. 1 (final norm and head) over 6 layer groups", logged);
        Assert.Contains("head-only warm-up: heads.head.weight, heads.head.bias alone (2 of 56 trainable tensors), then all of them", logged);
        var epoch1 = Path.Combine(_tmp, "epoch1.ckpt");
        File.Copy(Path.Combine(_tmp, "a", "checkpoints", "last.ckpt"), epoch1);
        var resumed = Run(["train", .. Tiny, "--epochs", "2", "--head-warmup-epochs", "1", "--layer-decay", "0.75", "--resume", epoch1, "--output", Path.Combine(_tmp, "b")]);
        Assert.True(resumed.Code == 0, resumed.Err);
        var straight = Run(["train", .. Tiny, "--epochs", "2", "--head-warmup-epochs", "1", "--layer-decay", "0.75", "--output", Path.Combine(_tmp, "c")]);
        Assert.True(straight.Code == 0, straight.Err);

        var a = CheckpointFile.Load(epoch1);
        var b = CheckpointFile.Load(Path.Combine(_tmp, "b", "checkpoints", "last.ckpt"));
        var c = CheckpointFile.Load(Path.Combine(_tmp, "c", "checkpoints", "last.ckpt"));
        var initial = InitialWeights(classes: (int)a.Get("param/" + Head[0], epoch1).Dims[0]);

        // After the head-only epoch: every body parameter is its initial value and every body state is still zero, bit for bit.
        Assert.Equal(("4", "0"), (a.Meta["step"], a.Meta["body_step"]));
        int body = 0;
        foreach (var t in a.Tensors.Where(t => !IsHead(t.Name)))
        {
            if (t.Name.StartsWith("param/", StringComparison.Ordinal))
            {
                Assert.True(t.RawData.Span.SequenceEqual(initial[t.Name[6..]].RawData.Span), $"{t.Name} changed in the head-only epoch");
                body++;
            }
            else if (t.Name.StartsWith("optim/", StringComparison.Ordinal))
                Assert.True(t.RawData.ToArray().All(x => x == 0), $"{t.Name} changed in the head-only epoch");
        }
        Assert.Equal(initial.Count - Head.Length, body);
        foreach (var h in Head) Assert.False(a.Get("param/" + h, epoch1).RawData.Span.SequenceEqual(initial[h].RawData.Span), $"{h} did not train in the head-only epoch");

        // After epoch 2 the body trained too (4 body updates), and resuming at the phase boundary is the straight run, bit for bit.
        Assert.Equal(("8", "4"), (b.Meta["step"], b.Meta["body_step"]));
        foreach (var name in new[] { "conv_proj.weight", "encoder.layers.encoder_layer_0.mlp.0.weight", "encoder.ln.weight" })
            Assert.False(b.Get("param/" + name, "b").RawData.Span.SequenceEqual(initial[name].RawData.Span), $"{name} did not train after the warm-up");
        Assert.Equal(c.Tensors.Select(t => t.Name), b.Tensors.Select(t => t.Name));
        foreach (var t in c.Tensors) Assert.True(t.RawData.Span.SequenceEqual(b.Get(t.Name, "b").RawData.Span), $"{t.Name}: the resumed run differs from the straight run");
    }

    /// <summary>The run's initial weights: the same model, class count and seed, built in this process from the built-in plugins.</summary>
    static Dictionary<string, Tensor> InitialWeights(int classes)
    {
        var catalog = PluginCatalog.Load([TestPaths.BuiltInPlugins]);
        var model = RunSetup.CreateModel(catalog, new RunSetup.Request
        {
            Model = "vit-tiny", Classes = classes, ImageSize = 16, Seed = 42, Policy = null!, Optimizer = new OptimizerOptions(),
        });
        return model.Forward.Graph.Initializers.Values.Where(t => t.Type == DataType.Float).ToDictionary(t => t.Name);
    }

    // ---- the settings against the model ----

    static ModelDefinition Plain() => new()
    {
        Forward = new Model(), InputName = "input", ImageSize = 8, Channels = 1, Mean = [0f], Std = [1f],
    };

    static RunSetup.Request Request(double? layerDecay = null, bool headWarmup = false) => new()
    {
        Model = "onnx", Classes = 2, Policy = null!, Optimizer = new OptimizerOptions(), LayerDecay = layerDecay, HeadWarmup = headWarmup,
    };

    static readonly Tensor[] Trainable = [Tensor.Float("fc.weight", [1f, 2f], 1, 2), Tensor.Float("fc.bias", [0f], 1)];

    [Fact]
    public void LayerDecayNeedsAModelWithLayerIds()
    {
        var e = Assert.Throws<UsageException>(() => RunSetup.LayerDecayMultipliers(Plain(), Request(layerDecay: 0.75), Trainable, []));
        Assert.Contains("Train:LayerDecay (--layer-decay) = '0.75': model 'onnx' has no layer structure", e.Message);
        Assert.Null(RunSetup.LayerDecayMultipliers(Plain(), Request(), Trainable, []));
    }

    [Fact]
    public void LayerDecayMultipliersAreTheModelsScalesForTheTrainableParameters()
    {
        var model = Plain() with { LayerIds = new Dictionary<string, int> { ["fc.weight"] = 0, ["fc.bias"] = 1, ["frozen"] = 0 }, NumLayers = 0 };
        var notes = new List<string>();
        var m = RunSetup.LayerDecayMultipliers(model, Request(layerDecay: 0.5), Trainable, notes)!;
        Assert.Equal(new Dictionary<string, double> { ["fc.weight"] = 0.5, ["fc.bias"] = 1.0 }, m);
        Assert.Equal("layer-wise lr decay 0.5: multipliers 0.5 (embeddings) .. 1 (final norm and head) over 2 layer groups", Assert.Single(notes));
    }

    [Fact]
    public void HeadWarmupNeedsAModelThatNamesATrainableHead()
    {
        var e = Assert.Throws<UsageException>(() => RunSetup.HeadParameters(Plain(), Request(headWarmup: true), Trainable, []));
        Assert.Contains("Train:HeadWarmupEpochs (--head-warmup-epochs): model 'onnx' does not say which parameters are its head", e.Message);
        var frozen = Assert.Throws<UsageException>(() => RunSetup.HeadParameters(Plain() with { HeadParameters = ["head.weight"] }, Request(headWarmup: true), Trainable, []));
        Assert.Contains("the head parameters (head.weight) are not trainable", frozen.Message);
        var notes = new List<string>();
        Assert.Equal(["fc.bias"], RunSetup.HeadParameters(Plain() with { HeadParameters = ["fc.bias"] }, Request(headWarmup: true), Trainable, notes)!);
        Assert.Equal("head-only warm-up: fc.bias alone (1 of 2 trainable tensors), then all of them", Assert.Single(notes));
        Assert.Null(RunSetup.HeadParameters(Plain(), Request(), Trainable, []));
    }
}
