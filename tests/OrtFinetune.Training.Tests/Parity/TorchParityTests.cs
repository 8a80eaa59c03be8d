using System.Text.Json;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Parity;

/// <summary>
/// Loss and every parameter gradient of compiled training graphs against PyTorch autograd, from the
/// fixtures made by tools/reference/make_autodiff_fixtures.py (torchvision ViT, ResNet blocks, MLPs).
/// </summary>
public class TorchParityTests(ITestOutputHelper log)
{
    public static TheoryData<string> Cases => new() { "mlp", "mlp_sum", "mlp_smoothing", "vit_small", "resnet_small" };

    const double Tolerance = 1e-4;

    [Theory, MemberData(nameof(Cases))]
    public void LossAndGradientsMatchPyTorch(string name)
    {
        var dir = RepoPaths.Fixture("autodiff", name);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var loss = json.RootElement.GetProperty("loss");
        var options = new CompileOptions
        {
            Loss = new LossOptions
            {
                Reduction = loss.GetProperty("reduction").GetString()!,
                LabelSmoothing = loss.GetProperty("label_smoothing").GetDouble(),
                IgnoreIndex = loss.GetProperty("ignore_index").GetInt64(),
            },
        };
        var torchParams = json.RootElement.GetProperty("parameters").EnumerateArray().Select(e => e.GetString()!).ToList();
        var reference = ModelIO.Load(Path.Combine(dir, "reference.onnx")).Graph.Initializers;

        var art = TrainingCompiler.Compile(ModelIO.Load(Path.Combine(dir, "model.onnx")), options);
        log.WriteLine($"{name}: {art.Parameters.Count} parameters, {art.TrainingModel.Graph.Nodes.Count} training nodes, compiled in {art.CompileTime.TotalMilliseconds:F0} ms");
        Assert.Equal(torchParams.OrderBy(x => x), art.Parameters.Select(p => p.Name).OrderBy(x => x));

        // The interface contract: inputs = forward inputs, labels, parameters, buffers; outputs = loss, forward outputs, grads, buffers.
        var tg = art.TrainingModel.Graph;
        Assert.Equal(["input", "labels", .. art.Parameters.Select(p => p.Name), .. art.Buffers.Select(b => b.Name)], tg.Inputs.Select(i => i.Name));
        Assert.Equal(["loss", "logits", .. art.Parameters.Select(p => p.Name + "_grad"), .. art.Buffers.Select(b => b.Name + "_updated"), "top1_correct", "top5_correct"], tg.Outputs.Select(o => o.Name));

        var feeds = new Dictionary<string, HostTensor>
        {
            ["input"] = HostTensor.FromTensor(reference["input"]),
            ["labels"] = HostTensor.FromTensor(reference["labels"]),
        };
        foreach (var t in art.Parameters.Concat(art.Buffers)) feeds[t.Name] = HostTensor.FromTensor(t);
        using var runner = new OrtRunner(art.TrainingModel);
        var outs = runner.Run(feeds);

        double torchLoss = reference["loss"].ToDoubles()[0];
        double ourLoss = outs["loss"].Values[0];
        log.WriteLine($"loss: ours {ourLoss:G9} torch {torchLoss:G9}");
        Assert.True(Math.Abs(ourLoss - torchLoss) <= Tolerance * Math.Abs(torchLoss), $"{name}: loss {ourLoss} vs torch {torchLoss}");
        Assert.True(RelErr(outs["logits"].Values, reference["logits"].ToDoubles()) <= Tolerance, $"{name}: logits differ");

        foreach (var p in art.Parameters)
        {
            var err = RelErr(outs[p.Name + "_grad"].Values, reference["grad/" + p.Name].ToDoubles());
            log.WriteLine($"  {p.Name,-40} rel err {err:E2}");
            Assert.True(err <= Tolerance, $"{name}: gradient of '{p.Name}' has relative error {err:E3} > {Tolerance}");
        }
        foreach (var bt in art.Buffers)
        {
            var err = RelErr(outs[bt.Name + "_updated"].Values, reference["running_onnx/" + bt.Name].ToDoubles());
            log.WriteLine($"  {bt.Name,-40} running-stat rel err {err:E2}");
            Assert.True(err <= Tolerance, $"{name}: updated buffer '{bt.Name}' has relative error {err:E3}");
        }

        // The eval graph loads in a plain session and gives the same loss where the forward is mode-independent.
        using var eval = new OrtRunner(art.EvalModel);
        var evalFeeds = feeds.Where(kv => art.EvalModel.Graph.Inputs.Any(i => i.Name == kv.Key)).ToDictionary();
        var evalOut = eval.Run(evalFeeds);
        if (art.Buffers.Count == 0)
            Assert.True(Math.Abs(evalOut["loss"].Values[0] - torchLoss) <= Tolerance * Math.Abs(torchLoss), $"{name}: eval loss {evalOut["loss"].Values[0]} vs {torchLoss}");
    }
}
