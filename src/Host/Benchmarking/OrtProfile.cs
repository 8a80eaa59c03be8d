using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>Per-op-type totals of ORT profiles ("where the time goes").</summary>
public sealed class OpProfile
{
    public Dictionary<string, double> Microseconds { get; } = new();
    public Dictionary<string, long> Calls { get; } = new();
    /// <summary>Sum of the model_run events (whole Run calls).</summary>
    public double RunMicroseconds { get; set; }
    public int Runs { get; set; }

    /// <summary>
    /// Adds an ORT profile file (Chrome trace JSON: an array of events). Kernel events are
    /// cat "Node" named "..._kernel_time" with args.op_name; whole runs are cat "Session" named "model_run".
    /// With <paramref name="skipFirstRun"/> the first run (first-time allocations, thread-pool spin-up) is left out.
    /// </summary>
    public void Add(string file, string? prefix = null, bool skipFirstRun = true)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        var events = doc.RootElement.EnumerateArray().Where(e => e.TryGetProperty("cat", out _) && e.TryGetProperty("dur", out _) && e.TryGetProperty("ts", out _)).ToList();
        static string Name(JsonElement e) => e.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "";
        var runs = events.Where(e => e.GetProperty("cat").GetString() == "Session" && Name(e) == "model_run")
            .Select(e => (Start: e.GetProperty("ts").GetDouble(), Dur: e.GetProperty("dur").GetDouble())).OrderBy(r => r.Start).ToList();
        double from = skipFirstRun && runs.Count > 1 ? runs[0].Start + runs[0].Dur : double.MinValue;
        foreach (var r in runs.Where(r => r.Start >= from)) { RunMicroseconds += r.Dur; Runs++; }
        foreach (var e in events)
        {
            var name = Name(e);
            if (e.GetProperty("cat").GetString() != "Node" || !name.EndsWith("_kernel_time", StringComparison.Ordinal)) continue;
            if (e.GetProperty("ts").GetDouble() < from) continue;
            var op = e.TryGetProperty("args", out var args) && args.TryGetProperty("op_name", out var o) ? o.GetString() ?? "?" : "?";
            if (prefix != null) op = prefix + op;
            Microseconds[op] = Microseconds.GetValueOrDefault(op) + e.GetProperty("dur").GetDouble();
            Calls[op] = Calls.GetValueOrDefault(op) + 1;
        }
    }

    public double KernelMicroseconds => Microseconds.Values.Sum();

    /// <summary>A Markdown table of the <paramref name="top"/> op types by total kernel time, per step.</summary>
    public string ToMarkdown(int steps, int top = 15)
    {
        var sb = new StringBuilder();
        double total = KernelMicroseconds;
        sb.AppendLine("| # | op type | ms per step | share of kernel time | calls per step | µs per call |");
        sb.AppendLine("|---|---|---|---|---|---|");
        int i = 0;
        foreach (var (op, us) in Microseconds.OrderByDescending(kv => kv.Value).Take(top))
        {
            long calls = Calls[op];
            sb.AppendLine(FormattableString.Invariant($"| {++i} | {op} | {us / 1000 / steps:F1} | {100 * us / total:F1}% | {(double)calls / steps:F0} | {us / calls:F1} |"));
        }
        double rest = total - Microseconds.OrderByDescending(kv => kv.Value).Take(top).Sum(kv => kv.Value);
        if (Microseconds.Count > top)
            sb.AppendLine(FormattableString.Invariant($"| | {Microseconds.Count - top} other op types | {rest / 1000 / steps:F1} | {100 * rest / total:F1}% | | |"));
        sb.AppendLine(FormattableString.Invariant($"| | **all kernels** | **{total / 1000 / steps:F1}** | 100% | {(double)Calls.Values.Sum() / steps:F0} | |"));
        if (Runs > 0)
            sb.AppendLine(FormattableString.Invariant($"| | whole Run calls (kernels + framework: allocation, copies, scheduling) | {RunMicroseconds / 1000 / steps:F1} | | | |"));
        return sb.ToString();
    }
}

/// <summary>
/// Profiles full steps with ORT's profiler. The Trainer creates its own sessions without a profiling
/// hook, so this runs the same compiled training and optimizer graphs in sessions made with the same
/// options plus EnableProfiling, inputs bound on the device. Outputs are ORT-allocated here rather than
/// bound in place, which moves allocation cost between kernels and framework but not kernel time.
/// </summary>
public static class ProfileRunner
{
    public static OpProfile Run(TrainingArtifacts compiled, Model optimizer, DeviceSpec device, int threads, bool cpuArena,
        OrtValue images, OrtValue labels, int steps, string dir, Action<string>? log = null)
    {
        Directory.CreateDirectory(dir);
        var profile = new OpProfile();
        var parameters = compiled.Parameters.Concat(compiled.Buffers).ToDictionary(t => t.Name);
        var tg = compiled.TrainingModel.Graph;
        using var so = device.CreateTrainingSessionOptions(threads, cpuArena);
        // The C# binding passes the prefix to ORT when EnableProfiling is set: prefix first, then enable.
        so.ProfileOutputPathPrefix = Path.Combine(dir, "train");
        so.EnableProfiling = true;
        var optimizedPath = Path.Combine(dir, "train_optimized.onnx");
        so.OptimizedModelFilePath = optimizedPath;
        using var train = new InferenceSession(ModelIO.ToBytes(compiled.TrainingModel), so);
        so.OptimizedModelFilePath = "";
        so.EnableProfiling = false;
        so.ProfileOutputPathPrefix = Path.Combine(dir, "optimizer");
        so.EnableProfiling = true;
        using var optim = new InferenceSession(ModelIO.ToBytes(optimizer), so);
        using var dev = new DeviceValues(device, train);
        var owned = new List<OrtValue>();
        OrtValue Own(OrtValue v) { owned.Add(v); return v; }
        var grads = new Dictionary<string, OrtValue>();
        try
        {
            using var tb = train.CreateIoBinding();
            int forwardAt = 0;
            foreach (var input in tg.Inputs)
            {
                var name = input.Name;
                OrtValue v;
                if (parameters.TryGetValue(name, out var t)) v = Own(dev.Upload(t.Type, t.Dims, t.RawData.Span));
                else if (name == compiled.Labels) v = labels;
                else if (name == TrainingArtifacts.LazyResetGrad) v = Own(OrtValue.CreateTensorValueFromMemory(new[] { true }, []));
                else if (name == TrainingArtifacts.LossScaleInput) v = Own(OrtValue.CreateTensorValueFromMemory(new[] { 1f }, []));
                else if (compiled.Parameters.FirstOrDefault(p => TrainingArtifacts.AccumulationBuffer(p.Name) == name) is { } p)
                    grads[p.Name] = v = Own(dev.Zeros(p.Type, p.Dims));
                else if (forwardAt++ == 0) v = images;
                else v = Own(dev.Zeros(input.Type.ElemType, input.Type.StaticDims()));
                tb.BindInput(name, v);
            }
            foreach (var o in tg.Outputs) tb.BindOutputToDevice(o.Name, dev.MemoryInfo);

            using var ob = optim.CreateIoBinding();
            var pnames = compiled.Parameters.Select(p => p.Name).ToHashSet();
            foreach (var input in optimizer.Graph.Inputs)
            {
                var name = input.Name;
                OrtValue v;
                if (name == OptimizerBuilder.LearningRate || name == OptimizerBuilder.GradScale)
                    v = Own(OrtValue.CreateTensorValueFromMemory(new[] { name == OptimizerBuilder.LearningRate ? 1e-4f : 1f }, []));
                else if (name is OptimizerBuilder.Step or OptimizerBuilder.BodyStep) v = Own(OrtValue.CreateTensorValueFromMemory(new[] { 1L }, []));
                else if (parameters.TryGetValue(name, out var t)) v = Own(dev.Upload(t.Type, t.Dims, t.RawData.Span));
                else if (name.EndsWith("_grad", StringComparison.Ordinal) && grads.TryGetValue(name[..^5], out var gv)) v = gv;
                else v = Own(dev.Zeros(input.Type.ElemType, input.Type.StaticDims()));
                ob.BindInput(name, v);
            }
            foreach (var o in optimizer.Graph.Outputs) ob.BindOutputToDevice(o.Name, dev.MemoryInfo);

            using var ro = new RunOptions();
            var clock = Stopwatch.StartNew();
            for (int s = 0; s <= steps; s++)   // one more: the first run is left out of the totals
            {
                train.RunWithBinding(ro, tb);
                tb.SynchronizeBoundOutputs();
                optim.RunWithBinding(ro, ob);
                ob.SynchronizeBoundOutputs();
            }
            log?.Invoke($"profiled {steps} steps (+1 left out) in {clock.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            foreach (var v in owned) v.Dispose();
            var tf = train.EndProfiling();
            var of = optim.EndProfiling();
            profile.Add(tf);
            profile.Add(of, "optimizer: ");
            // Which activations are resident at the training step's peak (liveness over ORT's execution order).
            try
            {
                var liveness = LivenessReport.FromProfile(tf, ModelIO.Load(optimizedPath));
                File.WriteAllText(Path.Combine(dir, "liveness.md"), liveness.ToMarkdown());
                log?.Invoke(FormattableString.Invariant($"resident activations at the step's peak: {liveness.PeakBytes / 1048576.0:F0} MiB (liveness.md)"));
            }
            catch (Exception e) when (e is IOException or OnnxFormatException or JsonException or KeyNotFoundException) { log?.Invoke($"no liveness report: {e.Message}"); }
        }
        return profile;
    }
}
