using System.CommandLine;
using System.Globalization;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Commands;

/// <summary>Hidden commands used by the crash-safety and reliability tests.</summary>
public static class DebugCommands
{
    public static Command CheckpointWriter()
    {
        var output = new Option<FileInfo>("--output") { Required = true };
        var mb = new Option<int>("--megabytes") { DefaultValueFactory = _ => 8 };
        var max = new Option<int>("--max-writes") { DefaultValueFactory = _ => 10000 };
        var kind = new Option<string>("--kind") { Description = "checkpoint or export (an ONNX model written like ExportModelForInferencing)", DefaultValueFactory = _ => "checkpoint" };
        var cmd = new Command("debug-checkpoint-writer", "Writes checkpoints or exported models in a loop (tensor values = step), for kill tests.") { output, mb, max, kind };
        cmd.Hidden = true;
        cmd.SetAction(r =>
        {
            int n = r.GetValue(mb) * (1 << 18);
            for (int step = 1; step <= r.GetValue(max); step++)
            {
                if (r.GetValue(kind) == "export")
                {
                    var m = new Model();
                    m.Metadata["step"] = step.ToString(CultureInfo.InvariantCulture);
                    var w = new float[n];
                    Array.Fill(w, step);
                    m.Graph.Initializers["w"] = Tensor.Float("w", w, w.Length);
                    m.Graph.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, w.Length)));
                    m.Graph.Outputs.Add(new ValueInfo("y", TensorType.Of(DataType.Float, w.Length)));
                    m.Graph.Nodes.Add(new Node("Add", ["x", "w"], ["y"], "add"));
                    ModelIO.Save(m, r.GetValue(output)!.FullName);
                    Console.WriteLine(step);
                    continue;
                }
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

    /// <summary>
    /// Copies an ONNX model, setting metadata entries (KEY=VALUE). The reliability tests use it to give an
    /// imported model an extreme input normalization (ortfinetune.std), which drives 16-bit compute into overflow.
    /// </summary>
    public static Command SetMetadata()
    {
        var model = new Option<FileInfo>("--model") { Required = true };
        var output = new Option<FileInfo>("--output") { Required = true };
        var set = new Option<string[]>("--set") { AllowMultipleArgumentsPerToken = true, Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("debug-set-metadata", "Copies an ONNX model with metadata entries set (KEY=VALUE).") { model, output, set };
        cmd.Hidden = true;
        cmd.SetAction(r =>
        {
            var m = ModelIO.Load(r.GetValue(model)!.FullName);
            foreach (var kv in r.GetValue(set) ?? [])
            {
                int eq = kv.IndexOf('=');
                if (eq <= 0) { Console.Error.WriteLine($"error: --set {kv}: expected KEY=VALUE"); return 1; }
                m.Metadata[kv[..eq]] = kv[(eq + 1)..];
            }
            ModelIO.Save(m, r.GetValue(output)!.FullName);
            return 0;
        });
        return cmd;
    }
}
