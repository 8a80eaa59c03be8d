using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Artifacts;

namespace OrtFinetune.Host.Commands;

/// <summary>
/// <c>ortfinetune step --artifacts DIR</c>: runs the compiled training graph for a few steps on random
/// inputs and reports step time, loss and peak memory. A smoke test and micro-benchmark of compiled
/// artifacts (no optimizer: weights stay as they are).
/// </summary>
public static class StepCommand
{
    public static Command Create()
    {
        var dir = new Option<DirectoryInfo>("--artifacts") { Description = "Folder written by 'compile'", Required = true };
        var batch = new Option<int>("--batch-size") { Description = "Batch size for symbolic batch dimensions", DefaultValueFactory = _ => 2 };
        var steps = new Option<int>("--steps") { Description = "Steps to run (the first is reported separately)", DefaultValueFactory = _ => 2 };
        var threads = new Option<int>("--threads") { Description = "Intra-op threads (0 = ORT default)", DefaultValueFactory = _ => 0 };
        var cmd = new Command("step", "Run the compiled training graph on random data and report time and memory.") { dir, batch, steps, threads };
        cmd.SetAction(r => Run(r.GetValue(dir)!.FullName, r.GetValue(batch), r.GetValue(steps), r.GetValue(threads)));
        return cmd;
    }

    public static int Run(string dir, int batch, int steps, int threads)
    {
        try
        {
            var sw = Stopwatch.StartNew();
            var train = Path.Combine(dir, ArtifactWriter.TrainingModelFile);
            var paramFile = Path.Combine(dir, ArtifactWriter.ParametersFile);
            using var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
            if (threads > 0) so.IntraOpNumThreads = threads;
            using var session = new InferenceSession(train, so);
            Console.WriteLine($"session created in {sw.Elapsed.TotalSeconds:F1} s");

            var feeds = new Dictionary<string, OrtValue>();
            var rng = new Random(1);
            var graph = ModelIO.Load(train).Graph;
            var parameters = ModelIO.Load(paramFile).Graph.Initializers;
            foreach (var input in graph.Inputs)
            {
                if (parameters.TryGetValue(input.Name, out var t)) { feeds[input.Name] = ToOrt(t.Type, t.Dims, t.RawData.Span); continue; }
                var dims = input.Type.Shape!.Select(d => d.Value ?? batch).ToArray();
                long n = dims.Aggregate(1L, (a, b) => a * b);
                if (input.Type.ElemType == DataType.Int64)
                {
                    long classes = graph.Outputs.Count > 1 ? graph.TypeOf(graph.Outputs[1].Name)?.Shape?[1].Value ?? 2 : 2;
                    feeds[input.Name] = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)n).Select(_ => (long)rng.Next((int)classes)).ToArray(), dims);
                }
                else feeds[input.Name] = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), dims);
            }
            parameters.Clear();
            graph = null;
            GC.Collect();
            var names = feeds.Keys.ToArray();
            var values = names.Select(k => feeds[k]).ToArray();
            var outputs = session.OutputNames.ToArray();
            using var ro = new RunOptions();
            for (int s = 0; s < steps; s++)
            {
                var t0 = Stopwatch.StartNew();
                using var res = session.Run(ro, names, values, outputs);
                var loss = res[0].GetTensorDataAsSpan<float>()[0];
                Console.WriteLine($"step {s + 1}: {t0.Elapsed.TotalSeconds:F2} s, loss {loss:F4}");
            }
            Console.WriteLine($"peak RSS: {Process.GetCurrentProcess().PeakWorkingSet64 / (1 << 20)} MiB");
            foreach (var v in values) v.Dispose();
            return 0;
        }
        catch (Exception e) when (e is OnnxFormatException or OnnxRuntimeException or IOException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
    }

    static OrtValue ToOrt(DataType t, long[] dims, ReadOnlySpan<byte> raw)
    {
        var et = t switch
        {
            DataType.Float => Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float,
            DataType.Float16 => Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float16,
            DataType.BFloat16 => Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16,
            DataType.Double => Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Double,
            _ => throw new NotSupportedException($"parameter type {t}"),
        };
        var v = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, et, dims);
        raw.CopyTo(v.GetTensorMutableRawData());
        return v;
    }
}
