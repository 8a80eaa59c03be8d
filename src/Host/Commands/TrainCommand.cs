using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OrtFinetune.Abstractions;
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
    public static Command Create(Option<string[]> pluginDirs)
    {
        var settings = HostSetup.SettingOptions();
        var verbose = new Option<bool>("--verbose") { Description = "Debug logging" };
        var cmd = new Command("train", "Train a model on a dataset (CPU by default) and write a run folder with metrics, checkpoints, the exported model and a summary.");
        foreach (var (o, _) in settings) cmd.Options.Add(o);
        cmd.Options.Add(verbose);
        cmd.SetAction(r =>
        {
            var config = HostSetup.CommandLineConfig(r, settings);
            foreach (var (k, v) in PluginsCommand.PluginDirConfig(r, pluginDirs)) config[k] = v;
            return Execute(config, r.GetValue(verbose));
        });
        return cmd;
    }

    public static int Execute(Dictionary<string, string?> commandLine, bool verbose)
    {
        var builder = HostSetup.CreateBuilder(commandLine, verbose);
        using var host = builder.Build();
        var log = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("train");
        var errors = new List<string>();
        var s = TrainSettings.FromConfiguration(host.Services.GetRequiredService<IConfiguration>(), errors);
        s.Validate(errors);
        if (errors.Count > 0)
        {
            foreach (var e in errors) Console.Error.WriteLine($"error: {e}");
            return ExitCodes.Usage;
        }
        host.Start();
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        try
        {
            var catalog = host.Services.GetRequiredService<PluginCatalog>();
            var run = new TrainRun(s, catalog, log, (ds, model, training, settings) => new LoaderBatchSource(ds, model, training, settings));
            return run.Run(lifetime.ApplicationStopping);
        }
        catch (Exception e) when (Classify(e) is int code)
        {
            Console.Error.WriteLine($"error: {e.Message}");
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
        NumericalException or TrainingException => ExitCodes.TrainingFailed,
        AggregateException a when a.InnerExceptions.Count == 1 => Classify(a.InnerExceptions[0]),
        _ => null,
    };
}
