using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using System.Runtime.InteropServices;
using OrtFinetune.Abstractions;
using OrtFinetune.Distributed;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.Training;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Commands;

/// <summary><c>ortfinetune train</c>: a full run (see <see cref="TrainRun"/>), inside the generic host.</summary>
public static class TrainCommand
{
    public static Command Create(Option<string[]> pluginDirs) => Make("train",
        "Train a model on a dataset (CPU by default) and write a run folder with metrics, checkpoints, the exported model and a summary.", pluginDirs, null);

    public static Command CreateEval(Option<string[]> pluginDirs) => Make("eval",
        "Evaluate a checkpoint on the test and validation splits (--run <run folder> or --resume <checkpoint> plus the run's settings).", pluginDirs, "eval");

    public static Command CreateExport(Option<string[]> pluginDirs) => Make("export",
        "Export a checkpoint as a plain ONNX inference model (--to FILE; --export-fp16 adds a float16 copy), or its weights as safetensors "
        + "(--format safetensors --naming torchvision|hf|timm) for PyTorch.", pluginDirs, "export");

    static Command Make(string name, string description, Option<string[]> pluginDirs, string? mode)
    {
        var settings = HostSetup.SettingOptions();
        var verbose = new Option<bool>("--verbose") { Description = "Debug logging, and the per-op dtype report" };
        var runDir = new Option<string?>("--run") { Description = "A run folder: its settings.json and checkpoints/last.ckpt are used (command-line options still win)" };
        var to = new Option<string?>("--to") { Description = "Where to write the exported model" };
        var format = new Option<string?>("--format") { Description = "onnx (inference model, the default) or safetensors (the weights, for PyTorch)" };
        var naming = new Option<string?>("--naming") { Description = "Parameter names of a safetensors export: torchvision (default), hf or timm" };
        var cmd = new Command(name, description);
        foreach (var (o, _) in settings) cmd.Options.Add(o);
        cmd.Options.Add(verbose);
        if (mode != null) cmd.Options.Add(runDir);
        if (mode == "export") { cmd.Options.Add(to); cmd.Options.Add(format); cmd.Options.Add(naming); }
        cmd.SetAction(r =>
        {
            var config = HostSetup.CommandLineConfig(r, settings);
            foreach (var (k, v) in PluginsCommand.PluginDirConfig(r, pluginDirs)) config[k] = v;
            if (mode == "export" && r.GetValue(format) is string f) config["Train:ExportFormat"] = f;
            if (mode == "export" && r.GetValue(naming) is string n) config["Train:ExportNaming"] = n;
            var run = mode != null ? r.GetValue(runDir) : null;
            if (run != null)
            {
                var file = Path.Combine(run, "settings.json");
                if (!File.Exists(file)) { Console.Error.WriteLine($"error: --run {run}: no settings.json in that folder"); return ExitCodes.Usage; }
                var fromRun = RunSettings(file);
                foreach (var (k, v) in fromRun) config.TryAdd(k, v);
                config.TryAdd("Train:Resume", Path.Combine(run, "checkpoints", "last.ckpt"));
                config.Remove("Train:Output");
            }
            bool safetensors = config.TryGetValue("Train:ExportFormat", out var ef) && ef == "safetensors";
            var exportTo = mode == "export" ? r.GetValue(to) ?? (run != null ? Path.Combine(run, safetensors ? "model.safetensors" : "model.onnx") : null) : null;
            if (mode == "export" && exportTo == null) { Console.Error.WriteLine("error: export needs --to FILE (or --run DIR)"); return ExitCodes.Usage; }
            return Execute(config, r.GetValue(verbose), evaluateOnly: mode == "eval", exportTo: exportTo);
        });
        return cmd;
    }

    /// <summary>A run's settings.json as configuration keys (Train:Name = value).</summary>
    static Dictionary<string, string?> RunSettings(string file)
    {
        var d = new Dictionary<string, string?>();
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(file));
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name is "Output" or "Resume" || p.Value.ValueKind == System.Text.Json.JsonValueKind.Null) continue;
            if (p.Value.ValueKind == System.Text.Json.JsonValueKind.Array)
            {
                int i = 0;
                foreach (var e in p.Value.EnumerateArray()) d[$"Train:{p.Name}:{i++}"] = e.ToString();
            }
            else d[$"Train:{p.Name}"] = p.Value.ToString();
        }
        return d;
    }

    public static int Execute(Dictionary<string, string?> commandLine, bool verbose, bool evaluateOnly = false, string? exportTo = null)
    {
        // A rank of a data-parallel job (started by mpirun or srun) joins it before anything else; other processes never load MPI.
        Communicator? comm;
        try { comm = evaluateOnly || exportTo != null ? null : Communicator.FromEnvironment(); }
        catch (DistributedException e) { Console.Error.WriteLine($"error: {e.Message}"); return ExitCodes.Usage; }
        if (comm == null) return Execute(commandLine, verbose, evaluateOnly, exportTo, null);
        int code = Execute(commandLine, verbose, evaluateOnly, exportTo, comm);
        // A failed rank ends the whole job (the others may be waiting for it in a collective); a finished or
        // interrupted one leaves MPI with the others.
        if (code is not (ExitCodes.Ok or ExitCodes.Interrupted)) comm.Abort(code);
        comm.Dispose();
        return code;
    }

    static int Execute(Dictionary<string, string?> commandLine, bool verbose, bool evaluateOnly, string? exportTo, Communicator? comm)
    {
        string rank = comm != null ? $"rank {comm.Rank}: " : "";
        var builder = HostSetup.CreateBuilder(commandLine, verbose);
        if (comm is { IsRoot: false }) builder.Logging.AddFilter(level => level >= LogLevel.Warning);   // rank 0 reports for all
        // mpirun relays the ranks' output through pseudo-terminals whatever its own output is: no colour codes there.
        if (comm != null) builder.Services.Configure<SimpleConsoleFormatterOptions>(o => o.ColorBehavior = LoggerColorBehavior.Disabled);
        using var host = builder.Build();
        var log = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("train");
        var errors = new List<string>();
        var s = TrainSettings.FromConfiguration(host.Services.GetRequiredService<IConfiguration>(), errors);
        s.Validate(errors);
        int ranks = s.Devices * s.NumNodes;
        if (comm != null && ranks > 1 && ranks != comm.Size)
            errors.Add($"Train:Devices (--devices) x Train:NumNodes (--num-nodes) = {ranks}, but this job has {comm.Size} ranks");
        if (errors.Count > 0)
        {
            foreach (var e in errors) Console.Error.WriteLine($"error: {rank}{e}");
            return ExitCodes.Usage;
        }
        if (comm == null && ranks > 1 && !evaluateOnly && exportTo == null)
            return DataParallelLaunch.Run(s, Environment.GetCommandLineArgs()[1..]);
        if (comm != null && s.Device == "cuda") s.Device = $"cuda:{comm.LocalRank}";   // one GPU per rank of a node
        host.Start();
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        // mpirun forwards SIGUSR1 to every rank: the launcher's way to ask for a clean stop (see DataParallelLaunch).
        using var usr1 = comm != null ? PosixSignalRegistration.Create((PosixSignal)10, ctx => { ctx.Cancel = true; lifetime.StopApplication(); }) : null;
        try
        {
            var catalog = host.Services.GetRequiredService<PluginCatalog>();
            var run = new TrainRun(s, catalog, log, (ds, model, training, settings) => new LoaderBatchSource(ds, model, training, settings, comm?.Rank ?? 0, comm?.Size ?? 1), comm);
            var ct = lifetime.ApplicationStopping;
            return exportTo != null ? run.Export(exportTo) : evaluateOnly ? run.Evaluate(ct) : run.Train(ct);
        }
        catch (Exception e) when (Classify(e) is int code)
        {
            Console.Error.WriteLine($"error: {rank}{e.Message}");
            return code;
        }
        finally
        {
            lifetime.StopApplication();
            host.StopAsync().GetAwaiter().GetResult();
        }
    }

    /// <summary>Maps the errors a user can cause to exit codes; anything else is a bug and keeps its trace.</summary>
    public static int? Classify(Exception e) => e switch
    {
        UsageException => ExitCodes.Usage,
        DatasetException or ModelException or OnnxFormatException or CheckpointException or IOException or UnauthorizedAccessException => ExitCodes.BadInput,
        CompileException => ExitCodes.Compile,
        NumericalException or TrainingException or DistributedException => ExitCodes.TrainingFailed,
        Abstractions.PrecisionException => ExitCodes.Usage,
        AggregateException a when a.InnerExceptions.Count == 1 => Classify(a.InnerExceptions[0]),
        _ => null,
    };
}
