using OrtFinetune.Host.Commands;
using System.CommandLine;

namespace OrtFinetune.Host;

public static class Program
{
    public static int Main(string[] args)
    {
        // Large buffers (activations with ORT's CPU arena off) mapped one by one, so freed ones leave the resident set.
        OrtFinetune.Training.Runtime.HostMemory.MapLargeAllocations();
        var pluginDirs = new Option<string[]>("--plugins-dir") { Description = "Plugin folders (default: Plugins:Folders in appsettings.json, else plugins/ next to the executable)", Recursive = true, AllowMultipleArgumentsPerToken = true };
        var root = new RootCommand("OrtFinetune: compile ONNX models into training graphs and finetune them on ONNX Runtime.") { pluginDirs };
        root.Subcommands.Add(CompileCommand.Create());
        root.Subcommands.Add(StepCommand.Create());
        root.Subcommands.Add(PluginsCommand.Create(pluginDirs));
        root.Subcommands.Add(TrainCommand.Create(pluginDirs));
        root.Subcommands.Add(TrainCommand.CreateEval(pluginDirs));
        root.Subcommands.Add(TrainCommand.CreateExport(pluginDirs));
        root.Subcommands.Add(BenchmarkCommand.Create(pluginDirs));
        root.Subcommands.Add(SelfTestCommand.Create(pluginDirs));
        root.Subcommands.Add(DebugCommands.CheckpointWriter());
        root.Subcommands.Add(DebugCommands.SetMetadata());
        // The generic host handles SIGINT/SIGTERM (checkpoint, then exit); System.CommandLine must not kill the process first.
        return root.Parse(args).Invoke(new InvocationConfiguration { ProcessTerminationTimeout = null });
    }
}
