using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Runtime;

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
            var manifest = Path.Combine(dir, ArtifactWriter.ManifestFile);
            if (File.Exists(manifest) && File.ReadAllText(manifest).Contains("\"gradient_accumulation\": true"))
                return RunTrainer(dir, batch, steps, threads);
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
            HostMemory.Release();
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
        catch (Exception e) when (e is OnnxFormatException or OnnxRuntimeException or IOException or TrainingException or CheckpointException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
    }

    /// <summary>Full training steps through the Trainer: forward, backward, optimizer update.</summary>
    static int RunTrainer(string dir, int batch, int steps, int threads)
    {
        var sw = Stopwatch.StartNew();
        using var trainer = Trainer.Load(dir, new TrainerOptions { IntraOpThreads = threads });
        Console.WriteLine($"trainer ready in {sw.Elapsed.TotalSeconds:F1} s ({trainer.ParameterNames.Count} parameters, optimizer {trainer.OptimizerType}, persistent state {trainer.PersistentBytes / (1 << 20)} MiB)");
        var graph = ModelIO.Load(Path.Combine(dir, ArtifactWriter.TrainingModelFile)).Graph;
        var input = graph.Inputs[0];
        var dims = input.Type.Shape!.Select(d => d.Value ?? batch).ToArray();
        long classes = graph.TypeOf(graph.Outputs[1].Name)?.Shape?[1].Value ?? 2;
        var rng = new Random(1);
        using var x = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)dims.Aggregate(1L, (a, b) => a * b)).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), dims);
        using var y = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)dims[0]).Select(_ => (long)rng.Next((int)classes)).ToArray(), [dims[0]]);
        trainer.SetLearningRate(1e-4f);
        var times = new List<double>();
        for (int s = 0; s < steps; s++)
        {
            var t0 = Stopwatch.StartNew();
            trainer.LazyResetGrad();
            var r = trainer.TrainStep([x], y);
            var o = trainer.OptimizerStep();
            times.Add(t0.Elapsed.TotalSeconds);
            Console.WriteLine($"step {s + 1}: {t0.Elapsed.TotalSeconds:F2} s, loss {r.Loss:F4}, grad norm {o.GradNorm:F3}");
        }
        if (times.Count > 1) Console.WriteLine($"median step (excluding the first): {times.Skip(1).Order().ElementAt((times.Count - 1) / 2):F2} s");
        Console.WriteLine($"peak RSS: {Process.GetCurrentProcess().PeakWorkingSet64 / (1 << 20)} MiB");
        return 0;
    }

    static OrtValue ToOrt(DataType t, long[] dims, ReadOnlySpan<byte> raw)
    {
        var v = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, DeviceValues.ToOrt(t), dims);
        raw.CopyTo(v.GetTensorMutableRawData());
        return v;
    }
}
