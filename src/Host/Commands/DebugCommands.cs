using System.CommandLine;
using System.Globalization;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Commands;

/// <summary>Hidden commands used by the crash-safety tests (a child process killed mid-write).</summary>
public static class DebugCommands
{
    public static Command CheckpointWriter()
    {
        var output = new Option<FileInfo>("--output") { Required = true };
        var mb = new Option<int>("--megabytes") { DefaultValueFactory = _ => 8 };
        var max = new Option<int>("--max-writes") { DefaultValueFactory = _ => 10000 };
        var cmd = new Command("debug-checkpoint-writer", "Writes checkpoints in a loop (tensor values = step), for kill tests.") { output, mb, max };
        cmd.Hidden = true;
        cmd.SetAction(r =>
        {
            int n = r.GetValue(mb) * (1 << 18);
            for (int step = 1; step <= r.GetValue(max); step++)
            {
                var ck = new CheckpointFile();
                ck.Meta["step"] = step.ToString(CultureInfo.InvariantCulture);
                var values = new float[n / 2];
                Array.Fill(values, step);
                ck.Tensors.Add(Tensor.Float("param/a", values, values.Length));
                ck.Tensors.Add(Tensor.Float("param/b", values, values.Length));
                ck.Save(r.GetValue(output)!.FullName);
                Console.WriteLine(step);
            }
            return 0;
        });
        return cmd;
    }
}
