using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.SelfTest;

/// <summary>
/// The committed PyTorch gradient fixtures (tools/reference/make_autodiff_fixtures.py: torchvision ViT,
/// ResNet blocks, MLPs; shipped next to the executable under selftest/autodiff) compiled and run once on a
/// device: loss, logits and every parameter gradient against PyTorch autograd, at the CPU tests' tolerance.
/// </summary>
public static class GradientParityCheck
{
    public const double Tolerance = 1e-4;

    public static string FixtureFolder => Path.Combine(AppContext.BaseDirectory, "selftest", "autodiff");

    /// <summary>The worst relative error of one fixture (loss, logits, gradients) and where it was.</summary>
    public sealed record Result(string Case, double MaxRelErr, string Worst);

    public static IReadOnlyList<Result> Run(DeviceSpec device)
    {
        if (!Directory.Exists(FixtureFolder)) throw new IOException($"{FixtureFolder}: the self-check's fixtures are missing (they are copied there by the host's build)");
        return Directory.GetDirectories(FixtureFolder).Order(StringComparer.Ordinal).Select(dir => RunCase(dir, device)).ToList();
    }

    static Result RunCase(string dir, DeviceSpec device)
    {
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
        var reference = ModelIO.Load(Path.Combine(dir, "reference.onnx")).Graph.Initializers;
        var art = TrainingCompiler.Compile(ModelIO.Load(Path.Combine(dir, "model.onnx")), options);

        using var so = device.CreateTrainingSessionOptions(0, false);
        using var session = new InferenceSession(ModelIO.ToBytes(art.TrainingModel), so);
        var feeds = new List<(string Name, Tensor Value)> { ("input", reference["input"]), ("labels", reference["labels"]) };
        feeds.AddRange(art.Parameters.Concat(art.Buffers).Select(t => (t.Name, t)));
        var values = feeds.Select(f => HostValue(f.Value)).ToList();
        try
        {
            using var run = new RunOptions();
            var outputNames = new List<string> { "loss", "logits" };
            outputNames.AddRange(art.Parameters.Select(p => TrainingArtifacts.GradName(p.Name)));
            using var outs = session.Run(run, feeds.Select(f => f.Name).ToList(), values, outputNames);
            var checks = new List<(string What, double Err)>
            {
                ("loss", RelErr(Doubles(outs[0]), reference["loss"].ToDoubles())),
                ("logits", RelErr(Doubles(outs[1]), reference["logits"].ToDoubles())),
            };
            for (int i = 0; i < art.Parameters.Count; i++)
                checks.Add(("grad " + art.Parameters[i].Name, RelErr(Doubles(outs[2 + i]), reference["grad/" + art.Parameters[i].Name].ToDoubles())));
            var worst = checks.MaxBy(c => c.Err);
            return new Result(Path.GetFileName(dir), worst.Err, worst.What);
        }
        finally { foreach (var v in values) v.Dispose(); }
    }

    static OrtValue HostValue(Tensor t)
    {
        var v = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, DeviceValues.ToOrt(t.Type), t.Dims);
        t.RawData.Span.CopyTo(v.GetTensorMutableRawData());
        return v;
    }

    static double[] Doubles(OrtValue v)
    {
        var info = v.GetTensorTypeAndShape();
        var t = new Tensor("x", DeviceValues.FromOrt(info.ElementDataType), info.Shape, v.GetTensorDataAsSpan<byte>().ToArray());
        return t.ToDoubles();
    }

    /// <summary>Relative L2 error of <paramref name="ours"/> against <paramref name="reference"/>.</summary>
    public static double RelErr(double[] ours, double[] reference)
    {
        double num = 0, den = 0;
        for (int i = 0; i < reference.Length; i++) { num += (ours[i] - reference[i]) * (ours[i] - reference[i]); den += reference[i] * reference[i]; }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), 1e-30);
    }
}
