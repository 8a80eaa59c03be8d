using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Host.Commands;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;

namespace OrtFinetune.Host.Tests;

[Collection("console")]
public class CompileCommandTests : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-compile-").FullName;
    public void Dispose() => Directory.Delete(_tmp, true);

    static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "OrtFinetune.slnx"))) return d.FullName;
        throw new InvalidOperationException("repository root not found");
    }

    static (int Code, string Out, string Err) Capture(Func<int> f)
    {
        var (o, e) = (Console.Out, Console.Error);
        var (so, se) = (new StringWriter(), new StringWriter());
        Console.SetOut(so); Console.SetError(se);
        try { return (f(), so.ToString(), se.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }

    [Fact]
    public void WritesArtifactsThatLoadInAPlainSession()
    {
        var model = Path.Combine(Root(), "tests", "fixtures", "autodiff", "mlp", "model.onnx");
        var outDir = Path.Combine(_tmp, "mlp");
        var (code, stdout, stderr) = Capture(() => CompileCommand.Run(model, outDir, new CompileOptions()));
        Assert.True(code == 0, stderr);
        Assert.Contains("trainable parameters: 6 tensors", stdout);
        foreach (var f in new[] { "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "initial_parameters.onnx", "artifacts.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        using (var s = new InferenceSession(Path.Combine(outDir, "training_model.onnx")))
        {
            Assert.Equal(["input", "labels", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"], s.InputNames);
            Assert.Equal(["loss", "logits", "fc1.weight_grad", "fc1.bias_grad", "fc2.weight_grad", "fc2.bias_grad", "fc3.weight_grad", "fc3.bias_grad", "top1_correct", "top5_correct"], s.OutputNames);
        }
        using (var s = new InferenceSession(Path.Combine(outDir, "eval_model.onnx")))
            Assert.Equal(["loss", "logits", "top1_correct", "top5_correct"], s.OutputNames);
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "artifacts.json")));
        Assert.Equal(6, manifest.RootElement.GetProperty("parameters").GetArrayLength());
        Assert.False(Directory.EnumerateFiles(outDir, "*.tmp").Any());
    }

    [Fact]
    public void TrainOnlyTheHead()
    {
        var model = Path.Combine(Root(), "tests", "fixtures", "autodiff", "mlp", "model.onnx");
        var outDir = Path.Combine(_tmp, "head");
        var (code, _, stderr) = Capture(() => CompileCommand.Run(model, outDir, new CompileOptions { Trainable = ["fc3.*"] }));
        Assert.True(code == 0, stderr);
        using var s = new InferenceSession(Path.Combine(outDir, "training_model.onnx"));
        Assert.Equal(["input", "labels", "fc3.weight", "fc3.bias"], s.InputNames);
        Assert.Equal(["loss", "logits", "fc3.weight_grad", "fc3.bias_grad", "top1_correct", "top5_correct"], s.OutputNames);
    }

    [Fact]
    public void MissingModelIsAClearError()
    {
        var (code, _, err) = Capture(() => CompileCommand.Run(Path.Combine(_tmp, "nope.onnx"), Path.Combine(_tmp, "o"), new CompileOptions()));
        Assert.Equal(2, code);
        Assert.Contains("nope.onnx: file not found", err);
    }

    [Fact]
    public void CorruptModelIsAClearError()
    {
        var bad = Path.Combine(_tmp, "bad.onnx");
        File.WriteAllBytes(bad, [0x0a, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
        var (code, _, err) = Capture(() => CompileCommand.Run(bad, Path.Combine(_tmp, "o"), new CompileOptions()));
        Assert.Equal(2, code);
        Assert.Contains("bad.onnx: not a valid ONNX model", err);
    }

    [Fact]
    public void BadLossOptionIsAClearError()
    {
        var model = Path.Combine(Root(), "tests", "fixtures", "autodiff", "mlp", "model.onnx");
        var (code, _, err) = Capture(() => CompileCommand.Run(model, Path.Combine(_tmp, "o"), new CompileOptions { Loss = new LossOptions { LabelSmoothing = 1.5 } }));
        Assert.Equal(3, code);
        Assert.Contains("label smoothing 1.5", err);
    }

    [Fact]
    public void UnknownTrainablePatternIsAClearError()
    {
        var model = Path.Combine(Root(), "tests", "fixtures", "autodiff", "mlp", "model.onnx");
        var (code, _, err) = Capture(() => CompileCommand.Run(model, Path.Combine(_tmp, "o"), new CompileOptions { Trainable = ["head.*"] }));
        Assert.Equal(3, code);
        Assert.Contains("'head.*' matches no parameter", err);
    }
}
