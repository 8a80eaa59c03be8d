using OrtFinetune.Host.Commands;
using System.CommandLine;

namespace OrtFinetune.Host;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("OrtFinetune: compile ONNX models into training graphs and finetune them on ONNX Runtime.");
        root.Subcommands.Add(CompileCommand.Create());
        root.Subcommands.Add(StepCommand.Create());
        root.Subcommands.Add(DebugCommands.CheckpointWriter());
        return root.Parse(args).Invoke();
    }
}
