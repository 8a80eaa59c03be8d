using System.CommandLine;
using System.Diagnostics;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Compiler.Optimizers;

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
        var accumulation = new Option<bool>("--gradient-accumulation") { Description = "Add in-graph gradient accumulation inputs (needed by the trainer)" };
        var optimizer = new Option<string>("--optimizer") { Description = "sgd, adam or adamw", DefaultValueFactory = _ => "adamw" };
        var weightDecay = new Option<double>("--weight-decay") { Description = "L2 penalty (sgd, adam) or decoupled decay (adamw)", DefaultValueFactory = _ => 0.01 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.0 };
        var nesterov = new Option<bool>("--nesterov") { Description = "SGD Nesterov momentum" };
        var beta1 = new Option<double>("--beta1") { DefaultValueFactory = _ => 0.9 };
        var beta2 = new Option<double>("--beta2") { DefaultValueFactory = _ => 0.999 };
        var eps = new Option<double>("--eps") { DefaultValueFactory = _ => 1e-8 };
        var maxNorm = new Option<double?>("--max-grad-norm") { Description = "Clip gradients to this global L2 norm" };
        var noDecay = new Option<string[]>("--no-decay") { Description = "Parameters without weight decay (globs; default: tensors with fewer than 2 dimensions)", AllowMultipleArgumentsPerToken = true };
        var layout = new Option<string>("--optimizer-layout")
        {
            Description = "Optimizer inputs: 'buckets' (flat buffers of parameters of one dtype and weight-decay group; layout in artifacts.json) or 'per-parameter' (one input per tensor)",
            DefaultValueFactory = _ => "buckets",
        };
        layout.AcceptOnlyFromAmong("buckets", "per-parameter");
        var bucketBytes = new Option<long>("--bucket-bytes") { Description = "Largest bucket, in bytes counted as fp32 (with --optimizer-layout buckets)", DefaultValueFactory = _ => OptimizerBuilder.DefaultBucketBytes };
        var cmd = new Command("compile", "Compile a forward ONNX model into training and eval models (standard ONNX ops only).")
        {
            model, output, smoothing, ignore, reduction, trainable, freeze, logits, accumulation,
            optimizer, weightDecay, momentum, nesterov, beta1, beta2, eps, maxNorm, noDecay, layout, bucketBytes,
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
                GradientAccumulation = r.GetValue(accumulation),
            };
            var optim = new OptimizerOptions
            {
                Type = r.GetValue(optimizer)!, WeightDecay = r.GetValue(weightDecay), Momentum = r.GetValue(momentum), Nesterov = r.GetValue(nesterov),
                Beta1 = r.GetValue(beta1), Beta2 = r.GetValue(beta2), Eps = r.GetValue(eps), MaxGradNorm = r.GetValue(maxNorm),
                NoDecay = r.GetValue(noDecay) is { Length: > 0 } nd ? nd : null,
                BucketBytes = r.GetValue(layout) == "per-parameter" ? 0 : r.GetValue(bucketBytes),
            };
            return Run(m.FullName, outDir, options, optim);
        });
        return cmd;
    }

    public static int Run(string modelPath, string outDir, CompileOptions options, OptimizerOptions? optimizer = null)
    {
        try
        {
            optimizer ??= new OptimizerOptions();
            optimizer.Validate();
            var sw = Stopwatch.StartNew();
            var forward = ModelIO.Load(modelPath);
            var loadTime = sw.Elapsed;
            var art = TrainingCompiler.Compile(forward, options);
            var compileTime = sw.Elapsed - loadTime;
            var optimModel = OptimizerBuilder.Build(art.Parameters, optimizer, art.TrainingModel.OpsetOf(""));
            ArtifactWriter.Write(art, outDir, modelPath, optimModel, optimizer);
            long elements = art.Parameters.Sum(p => p.ElementCount);
            Console.WriteLine($"compiled {Path.GetFileName(modelPath)} -> {outDir}");
            Console.WriteLine($"  trainable parameters: {art.Parameters.Count} tensors, {elements:N0} values; frozen: {art.FrozenParameters.Count}; state buffers: {art.Buffers.Count}");
            var buckets = OptimizerBucket.Read(optimModel);
            var layoutText = buckets.Count > 0 ? $"{buckets.Count} bucket{(buckets.Count == 1 ? "" : "s")}" : "per parameter";
            Console.WriteLine($"  optimizer: {optimizer.Type}{(optimizer.MaxGradNorm is double n ? $", clip at {n}" : "")} ({layoutText}); gradient accumulation: {(art.HasAccumulation ? "yes" : "no")}");
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
