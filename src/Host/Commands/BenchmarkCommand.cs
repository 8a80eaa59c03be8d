using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using OrtFinetune.Host.Benchmarking;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Commands;

/// <summary>
/// <c>ortfinetune benchmark</c>: step time, throughput, peak memory, achieved FLOP/s (and optionally
/// accuracy and an op-type profile) per precision policy, each policy in a child process of this
/// executable (the hidden <c>benchmark run-policy</c> verb) so that peak RSS is per policy.
/// Writes benchmark.json, benchmark.md, PNG charts and, with --profile, profile.md.
/// </summary>
public static class BenchmarkCommand
{
    public const string ChildVerb = "run-policy";

    public static Command Create(Option<string[]> pluginDirs)
    {
        var model = new Option<string>("--model") { Description = "Model architecture from a model plugin (vit-tiny, vit-small, vit-b16, vit-l16, ...)", DefaultValueFactory = _ => "vit-tiny" };
        var dataset = new Option<string>("--dataset") { Description = "'synthetic' (random images and labels in memory) or a dataset plugin's name (needed for --epochs)", DefaultValueFactory = _ => "synthetic" };
        var dataDir = new Option<string?>("--data-dir") { Description = "Dataset folder (plugin datasets)" };
        var limit = new Option<int>("--limit") { Description = "Samples per split for plugin datasets (0 = all)" };
        var batch = new Option<int>("--batch-size") { Description = "Batch size", DefaultValueFactory = _ => 8 };
        var precisions = new Option<string[]>("--precisions") { Description = "Precision policies, comma- or space-separated (32-true, 16-mixed, bf16-mixed, 16-true, bf16-true)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => ["32-true"] };
        var warmup = new Option<int>("--warmup") { Description = "Untimed warm-up steps per policy", DefaultValueFactory = _ => 2 };
        var steps = new Option<int>("--steps") { Description = "Timed full steps (TrainStep + OptimizerStep) per policy", DefaultValueFactory = _ => 10 };
        var epochs = new Option<int>("--epochs") { Description = "Also train this many full epochs per policy on --dataset with evaluation (accuracy, loss curves); 0 = none" };
        var imageSize = new Option<int>("--image-size") { Description = "Input side in pixels (0 = the model's default)" };
        var classes = new Option<int>("--classes") { Description = "Classes of the synthetic dataset", DefaultValueFactory = _ => 1000 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var threads = new Option<int>("--threads") { Description = "Intra-op threads (0 = ORT default)" };
        var arena = new Option<bool>("--cpu-arena") { Description = "ORT's CPU memory arena (train's default: on)", DefaultValueFactory = _ => true };
        var lowActivations = new Option<bool>("--low-precision-activations") { Description = "Mixed policies keep 16-bit activations on the CPU, as on a GPU (train's option of that name)" };
        var optimizer = new Option<string>("--optimizer") { Description = "sgd, adam or adamw", DefaultValueFactory = _ => "adamw" };
        var lr = new Option<double>("--lr") { Description = "Learning rate", DefaultValueFactory = _ => 1e-4 };
        var wd = new Option<double>("--weight-decay") { Description = "Weight decay", DefaultValueFactory = _ => 0.05 };
        var clip = new Option<double?>("--max-grad-norm") { Description = "Gradient clipping (default: none, as the PyTorch peer)" };
        var seed = new Option<int>("--seed") { Description = "Seed", DefaultValueFactory = _ => 42 };
        var weights = new Option<string?>("--weights") { Description = "Initial weights (safetensors with torchvision names, e.g. written by bench/peers/torch_vit.py --export-weights)" };
        var workers = new Option<int>("--workers") { Description = "Data-loader workers (epochs)", DefaultValueFactory = _ => 2 };
        var profile = new Option<bool>("--profile") { Description = "Profile the steps with ORT's profiler and write profile.md (time per op type)" };
        var noPeak = new Option<bool>("--no-peak") { Description = "Skip measuring the machine's MatMul peak" };
        var output = new Option<string?>("--output") { Description = "Output folder (default benchmarks/<time>)" };
        var cmd = new Command("benchmark", "Measure step time, throughput, peak memory and FLOP/s per precision policy; write benchmark.json, benchmark.md and PNG charts.")
        {
            model, dataset, dataDir, limit, batch, precisions, warmup, steps, epochs, imageSize, classes, device, threads, arena, lowActivations,
            optimizer, lr, wd, clip, seed, weights, workers, profile, noPeak, output,
        };
        cmd.SetAction((r, ct) =>
        {
            var config = new ConfigurationBuilder()
                .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true)
                .AddJsonFile(Path.Combine(Directory.GetCurrentDirectory(), "appsettings.json"), optional: true)
                .AddEnvironmentVariables("ORTFINETUNE_")
                .AddInMemoryCollection(PluginsCommand.PluginDirConfig(r, pluginDirs)).Build();
            var spec = new BenchmarkSpec
            {
                Model = r.GetValue(model)!, Dataset = r.GetValue(dataset)!, DataDir = r.GetValue(dataDir), Limit = r.GetValue(limit),
                BatchSize = r.GetValue(batch),
                Precisions = (r.GetValue(precisions) ?? []).SelectMany(p => p.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
                Warmup = r.GetValue(warmup), Steps = r.GetValue(steps), Epochs = r.GetValue(epochs), ImageSize = r.GetValue(imageSize),
                Classes = r.GetValue(classes), Device = r.GetValue(device)!, Threads = r.GetValue(threads), CpuArena = r.GetValue(arena), LowPrecisionActivations = r.GetValue(lowActivations),
                Optimizer = r.GetValue(optimizer)!, Lr = r.GetValue(lr), WeightDecay = r.GetValue(wd), MaxGradNorm = r.GetValue(clip),
                Seed = r.GetValue(seed), Weights = r.GetValue(weights) is { } w ? Path.GetFullPath(w) : null, Workers = r.GetValue(workers), Profile = r.GetValue(profile), MeasurePeak = !r.GetValue(noPeak),
                PluginFolders = HostSetup.PluginFolders(config).Select(Path.GetFullPath).ToArray(),
                Output = Path.GetFullPath(r.GetValue(output) ?? Path.Combine("benchmarks", DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture))),
            };
            return Task.FromResult(Run(spec, "ortfinetune " + string.Join(' ', r.Tokens.Select(t => t.Value)), ct));
        });
        cmd.Subcommands.Add(CreateChild());
        return cmd;
    }

    static List<string> Validate(BenchmarkSpec s)
    {
        var e = new List<string>();
        if (s.Precisions.Length == 0) e.Add("--precisions: give at least one policy");
        if (s.Precisions.Distinct(StringComparer.OrdinalIgnoreCase).Count() != s.Precisions.Length) e.Add("--precisions: a policy is listed twice");
        if (s.BatchSize is < 1 or > 65536) e.Add($"--batch-size {s.BatchSize}: must be between 1 and 65536");
        if (s.Steps < 1) e.Add($"--steps {s.Steps}: must be at least 1");
        if (s.Warmup < 0) e.Add($"--warmup {s.Warmup}: must be >= 0");
        if (s.Epochs < 0) e.Add($"--epochs {s.Epochs}: must be >= 0");
        if (s.Epochs > 0 && s.Dataset.Equals("synthetic", StringComparison.OrdinalIgnoreCase)) e.Add("--epochs needs a real dataset (--dataset cifar10, fashion-mnist, ...): accuracy on random labels means nothing");
        if (s.Classes < 2) e.Add($"--classes {s.Classes}: must be at least 2");
        if (s.Optimizer is not ("sgd" or "adam" or "adamw")) e.Add($"--optimizer {s.Optimizer}: must be sgd, adam or adamw");
        if (s.Precisions.Any(p => p.Any(ch => !(char.IsLetterOrDigit(ch) || ch == '-' || ch == '_')))) e.Add("--precisions: policy names are letters, digits and '-'");
        try { DeviceSpec.Parse(s.Device); } catch (TrainingException x) { e.Add($"--device: {x.Message}"); }
        return e;
    }

    public static int Run(BenchmarkSpec spec, string commandLine, CancellationToken ct)
    {
        var errors = Validate(spec);
        if (errors.Count > 0) { foreach (var e in errors) Console.Error.WriteLine($"error: {e}"); return ExitCodes.Usage; }
        Directory.CreateDirectory(spec.Output);
        var device = DeviceSpec.Parse(spec.Device);
        var peaks = new Dictionary<string, double>();
        // On CUDA a product big enough that launch overhead does not count (1.1 TFLOP), in each type the policies use;
        // on the CPU fp32 only (the stock CPU package has no 16-bit MatMul kernels).
        (long m, long k, long n) shape = device.IsCuda ? (8192, 8192, 8192) : (2048, 1024, 4096);
        var peakShape = $"[{shape.m}x{shape.k}] x [{shape.k}x{shape.n}]";
        if (spec.MeasurePeak)
        {
            DataType[] types = device.IsCuda ? [DataType.Float, DataType.Float16, DataType.BFloat16] : [DataType.Float];
            foreach (var t in types)
            {
                try
                {
                    double peak = Machine.MatMulPeakGflops(device, spec.Threads, shape.m, shape.k, shape.n, type: t);
                    peaks[BenchmarkChild.TypeName(t)] = peak;
                    Console.Error.WriteLine(FormattableString.Invariant($"MatMul peak on {device}: {peak:F1} GFLOP/s ({BenchmarkChild.TypeName(t)} {peakShape})"));
                }
                catch (Exception e) when (e is TrainingException or Microsoft.ML.OnnxRuntime.OnnxRuntimeException)
                {
                    if (t == DataType.Float) { Console.Error.WriteLine($"error: {e.Message}"); return ExitCodes.BadInput; }
                    Console.Error.WriteLine($"warning: no {BenchmarkChild.TypeName(t)} MatMul peak on {device}: {e.Message.Trim()}");
                }
            }
        }
        var results = new List<PolicyResult>();
        foreach (var p in spec.Precisions)
        {
            if (ct.IsCancellationRequested) break;
            results.Add(RunChild(spec with { Precision = p }, ct));
        }
        var ctx = new BenchmarkReport.Context(spec, commandLine, peaks, peakShape, device.ToString(), Machine.CpuModel(), Machine.OrtVersion());
        var written = BenchmarkReport.Write(spec.Output, ctx, results);
        Console.WriteLine(File.ReadAllText(Path.Combine(spec.Output, BenchmarkReport.MarkdownFile)));
        Console.WriteLine($"wrote {string.Join(", ", written)} to {spec.Output}");
        if (ct.IsCancellationRequested) return ExitCodes.Interrupted;
        return results.Any(r => r.Error != null) ? ExitCodes.TrainingFailed : ExitCodes.Ok;
    }

    /// <summary>Runs one policy in a child process of this executable; its stderr is passed through.</summary>
    static PolicyResult RunChild(BenchmarkSpec spec, CancellationToken ct)
    {
        var dir = Directory.CreateDirectory(Path.Combine(spec.Output, "policies")).FullName;
        var specFile = Path.Combine(dir, spec.Precision + ".spec.json");
        var resultFile = Path.Combine(dir, spec.Precision + ".json");
        File.WriteAllText(specFile, JsonSerializer.Serialize(spec, BenchmarkSpec.Json));
        File.Delete(resultFile);
        var psi = HostSetup.SelfProcess(["benchmark", ChildVerb, "--spec", specFile, "--result", resultFile]);
        var tail = new Queue<string>();
        using var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data == null) return;
            Console.Error.WriteLine(e.Data);
            lock (tail) { tail.Enqueue(e.Data); if (tail.Count > 15) tail.Dequeue(); }
        };
        Console.Error.WriteLine($"== {spec.Precision}: {psi.FileName} {string.Join(' ', psi.ArgumentList)}");
        p.Start();
        p.BeginErrorReadLine();
        using (ct.Register(() => { try { if (!p.HasExited) p.Kill(true); } catch (InvalidOperationException) { } }))
            p.WaitForExit();
        PolicyResult? r = null;
        if (File.Exists(resultFile))
            r = JsonSerializer.Deserialize<PolicyResult>(File.ReadAllText(resultFile), BenchmarkSpec.Json);
        r ??= new PolicyResult { Precision = spec.Precision };
        if (p.ExitCode != 0 && r.Error == null)
        {
            string last;
            lock (tail) last = string.Join(" / ", tail.Where(l => l.Contains("error", StringComparison.OrdinalIgnoreCase) || l.Contains("exception", StringComparison.OrdinalIgnoreCase)).TakeLast(2));
            r.Error = $"child process exited with code {p.ExitCode}" + (last.Length > 0 ? ": " + last : "");
        }
        return r;
    }

    static Command CreateChild()
    {
        var spec = new Option<string>("--spec") { Required = true };
        var result = new Option<string>("--result") { Required = true };
        var cmd = new Command(ChildVerb, "Measure one precision policy (used by 'benchmark').") { spec, result };
        cmd.Hidden = true;
        cmd.SetAction((r, ct) =>
        {
            var s = JsonSerializer.Deserialize<BenchmarkSpec>(File.ReadAllText(r.GetValue(spec)!), BenchmarkSpec.Json)!;
            // ORTFINETUNE_BENCHMARK_LOG_LEVEL=Debug adds the child's memory notes (resident set and GC heap per phase).
            var level = Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("ORTFINETUNE_BENCHMARK_LOG_LEVEL"), true, out var l) ? l : LogLevel.Information;
            using var factory = LoggerFactory.Create(b => b.SetMinimumLevel(level).AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; })
                .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace)
                .AddFilter("plugins", LogLevel.Warning));
            var log = factory.CreateLogger("benchmark");
            PolicyResult res;
            int code;
            try { res = BenchmarkChild.Run(s, log, ct); code = ExitCodes.Ok; }
            catch (Exception e) when (TrainCommand.Classify(e) is int c)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                res = new PolicyResult { Precision = s.Precision, Device = s.Device, Error = e.Message };
                code = c;
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"error: {e}");
                res = new PolicyResult { Precision = s.Precision, Device = s.Device, Error = $"{e.GetType().Name}: {e.Message}" };
                code = ExitCodes.TrainingFailed;
            }
            File.WriteAllText(r.GetValue(result)!, JsonSerializer.Serialize(res, BenchmarkSpec.Json));
            return Task.FromResult(code);
        });
        return cmd;
    }
}
