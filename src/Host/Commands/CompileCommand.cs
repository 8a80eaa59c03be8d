using System.CommandLine;
using System.Diagnostics;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Losses;

namespace OrtFinetune.Host.Commands;

/// <summary><c>ortfinetune compile --model forward.onnx --output dir</c>: writes the training artifacts.</summary>
public static class CompileCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "Forward ONNX model (logits as its first output)", Required = true };
        var output = new Option<DirectoryInfo?>("--output") { Description = "Artifacts folder (default: artifacts/<model name>)" };
        var smoothing = new Option<double>("--label-smoothing") { Description = "Cross-entropy label smoothing in [0, 1)", DefaultValueFactory = _ => 0.0 };
        var ignore = new Option<long>("--ignore-index") { Description = "Label value ignored by the loss", DefaultValueFactory = _ => -100 };
        var reduction = new Option<string>("--reduction") { Description = "Loss reduction: mean or sum", DefaultValueFactory = _ => "mean" };
        var trainable = new Option<string[]>("--trainable") { Description = "Train only parameters matching these globs (e.g. 'heads.*')", AllowMultipleArgumentsPerToken = true };
        var freeze = new Option<string[]>("--freeze") { Description = "Keep parameters matching these globs frozen", AllowMultipleArgumentsPerToken = true };
        var logits = new Option<string?>("--logits") { Description = "Forward output used as logits (default: the first output)" };
        var cmd = new Command("compile", "Compile a forward ONNX model into training and eval models (standard ONNX ops only).")
        {
            model, output, smoothing, ignore, reduction, trainable, freeze, logits,
        };
        cmd.SetAction(r =>
        {
            var m = r.GetValue(model)!;
            var outDir = r.GetValue(output)?.FullName ?? Path.Combine("artifacts", Path.GetFileNameWithoutExtension(m.Name));
            var options = new CompileOptions
            {
                Loss = new LossOptions { LabelSmoothing = r.GetValue(smoothing), IgnoreIndex = r.GetValue(ignore), Reduction = r.GetValue(reduction)! },
                Trainable = r.GetValue(trainable) ?? [],
                Freeze = r.GetValue(freeze) ?? [],
                LogitsOutput = r.GetValue(logits),
            };
            return Run(m.FullName, outDir, options);
        });
        return cmd;
    }

    public static int Run(string modelPath, string outDir, CompileOptions options)
    {
        try
        {
            var sw = Stopwatch.StartNew();
            var forward = ModelIO.Load(modelPath);
            var loadTime = sw.Elapsed;
            var art = TrainingCompiler.Compile(forward, options);
            var compileTime = sw.Elapsed - loadTime;
            ArtifactWriter.Write(art, outDir, modelPath);
            long elements = art.Parameters.Sum(p => p.ElementCount);
            Console.WriteLine($"compiled {Path.GetFileName(modelPath)} -> {outDir}");
            Console.WriteLine($"  trainable parameters: {art.Parameters.Count} tensors, {elements:N0} values; frozen: {art.FrozenParameters.Count}; state buffers: {art.Buffers.Count}");
            Console.WriteLine($"  nodes: forward {forward.Graph.Nodes.Count}, training {art.TrainingModel.Graph.Nodes.Count}, eval {art.EvalModel.Graph.Nodes.Count}");
            Console.WriteLine($"  time: load {loadTime.TotalSeconds:F2} s, compile {compileTime.TotalSeconds:F2} s, write {(sw.Elapsed - loadTime - compileTime).TotalSeconds:F2} s");
            return 0;
        }
        catch (Exception e) when (e is OnnxFormatException or CompileException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return e is CompileException ? 3 : 2;
        }
    }
}
