using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ScottPlot;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>Writes benchmark.json, benchmark.md, profile.md and the PNG charts of a benchmark run.</summary>
public static class BenchmarkReport
{
    public const string JsonFile = "benchmark.json", MarkdownFile = "benchmark.md", ProfileFile = "profile.md";
    public const string TimeChart = "time.png", MemoryChart = "memory.png", AccuracyChart = "accuracy.png", LossChart = "loss.png";

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <param name="Peaks">Measured MatMul peaks by element type ("float32", "float16", "bfloat16"), GFLOP/s; empty when not measured.</param>
    /// <param name="PeakShape">The product the peaks were measured on, e.g. "[2048x1024] x [1024x4096]".</param>
    public sealed record Context(BenchmarkSpec Spec, string CommandLine, IReadOnlyDictionary<string, double> Peaks, string PeakShape, string Device, string Cpu, string OrtVersion);

    /// <summary>The peak a policy is compared with: that of the type most of its matrix products run in (fp32 when not measured).</summary>
    static double? PeakFor(Context c, PolicyResult r) =>
        c.Peaks.TryGetValue(r.MatMulType, out var p) ? p : c.Peaks.TryGetValue("float32", out var f) ? f : null;

    /// <summary>The policy the ratios are relative to: 32-true when it was run and succeeded, else the first that did.</summary>
    public static PolicyResult? Reference(IReadOnlyList<PolicyResult> results) =>
        results.FirstOrDefault(r => r.Error == null && r.Precision == "32-true") ?? results.FirstOrDefault(r => r.Error == null);

    static double MemoryOf(PolicyResult r) => r.PeakDeviceBytes is long d && d > 0 ? d : r.PeakRssBytes;

    public static List<string> Write(string dir, Context c, IReadOnlyList<PolicyResult> results)
    {
        Directory.CreateDirectory(dir);
        var written = new List<string>();
        var refr = Reference(results);
        foreach (var r in results.Where(r => r.Error == null))
        {
            if (PeakFor(c, r) is not double peak || peak <= 0) continue;
            r.PeakMatMulGflops = peak;
            r.FractionOfPeak = r.AchievedGflops / peak;
        }

        var json = new JsonObject
        {
            ["created"] = DateTime.UtcNow.ToString("o", Inv),
            ["command"] = c.CommandLine,
            ["machine"] = new JsonObject
            {
                ["device"] = c.Device, ["cpu"] = c.Cpu, ["cores"] = Environment.ProcessorCount, ["os"] = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
                ["dotnet"] = Environment.Version.ToString(), ["onnxruntime"] = c.OrtVersion,
                ["matmul_peak_gflops"] = c.Peaks.TryGetValue("float32", out var fp32) ? fp32 : null,
                ["matmul_peaks_gflops"] = JsonSerializer.SerializeToNode(c.Peaks), ["matmul_peak_shape"] = c.PeakShape,
            },
            ["settings"] = JsonSerializer.SerializeToNode(c.Spec with { Precision = "", PluginFolders = [] }, BenchmarkSpec.Json),
            ["reference_policy"] = refr?.Precision,
        };
        var arr = new JsonArray();
        foreach (var r in results)
        {
            var node = JsonSerializer.SerializeToNode(r, BenchmarkSpec.Json)!.AsObject();
            if (refr != null && r.Error == null)
            {
                node["speedup_vs_reference"] = Math.Round(refr.MedianSeconds / r.MedianSeconds, 4);
                node["memory_vs_reference"] = Math.Round(MemoryOf(r) / MemoryOf(refr), 4);
            }
            arr.Add(node);
        }
        json["policies"] = arr;
        File.WriteAllText(Path.Combine(dir, JsonFile), json.ToJsonString(BenchmarkSpec.Json));
        written.Add(JsonFile);

        File.WriteAllText(Path.Combine(dir, MarkdownFile), Markdown(c, results, refr));
        written.Add(MarkdownFile);
        if (results.Any(r => r.ProfileByOpType != null))
        {
            File.WriteAllText(Path.Combine(dir, ProfileFile), ProfileMarkdown(c, results));
            written.Add(ProfileFile);
        }
        try { written.AddRange(Charts(dir, c, results)); }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException)
        {
            // Charts need SkiaSharp's native library (and fontconfig); the figures above do not.
            Console.Error.WriteLine($"warning: charts not written ({e.GetType().Name}: {(e.InnerException ?? e).Message.Trim()})");
        }
        return written;
    }

    static string MiB(double bytes) => (bytes / (1 << 20)).ToString("N0", Inv);

    public static string Markdown(Context c, IReadOnlyList<PolicyResult> results, PolicyResult? refr)
    {
        var s = c.Spec;
        bool cuda = results.Any(r => r.PeakDeviceBytes > 0);
        bool acc = results.Any(r => r.TestAccuracy != null);
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# Benchmark: {s.Model}, batch {s.BatchSize}, {s.Optimizer}, {s.Dataset} data, {c.Device}");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"`{c.CommandLine}`");
        sb.AppendLine();
        sb.AppendLine($"Machine: {c.Cpu}, {Environment.ProcessorCount} cores; ONNX Runtime {c.OrtVersion}; .NET {Environment.Version}. " +
            $"{s.Warmup} warm-up + {s.Steps} timed full steps (TrainStep + OptimizerStep) per policy, each policy in its own process" +
            (s.CpuArena ? ", CPU arena on" : ", CPU arena off") + (s.LowPrecisionActivations ? ", --low-precision-activations" : "") + (s.Threads > 0 ? $", {s.Threads} intra-op threads" : "") + ".");
        sb.AppendLine();
        sb.Append("| policy | step time median (s) | p10 / p90 (s) | samples/s | peak RSS (MiB) |");
        if (cuda) sb.Append(" peak device memory (MiB) |");
        sb.Append(" predicted (MiB) |");
        sb.Append(" GFLOP/s (% of MatMul peak) |");
        if (acc) sb.Append(" test accuracy |");
        sb.AppendLine(CultureInfo.InvariantCulture, $" speed vs {refr?.Precision ?? "reference"} | memory vs {refr?.Precision ?? "reference"} |");
        int cols = 9 + (cuda ? 1 : 0) + (acc ? 1 : 0);
        sb.AppendLine("|" + string.Concat(Enumerable.Repeat("---|", cols)));
        foreach (var r in results)
        {
            if (r.Error != null) { sb.AppendLine($"| {r.Precision} | failed: {r.Error.Replace("|", "\\|").Replace("\n", " ")} |" + string.Concat(Enumerable.Repeat(" |", cols - 2))); continue; }
            sb.Append(FormattableString.Invariant($"| {r.Precision} | {r.MedianSeconds:F3} | {r.P10Seconds:F3} / {r.P90Seconds:F3} | {r.SamplesPerSecond:F1} | {MiB(r.PeakRssBytes)} |"));
            if (cuda) sb.Append(r.PeakDeviceBytes is long d ? $" {MiB(d)} |" : " – |");
            sb.Append(r.PredictedPeakBytes is long pp ? $" {MiB(pp)} |" : " – |");
            sb.Append(FormattableString.Invariant($" {r.AchievedGflops:F1}") + (r.FractionOfPeak is double f ? FormattableString.Invariant($" ({100 * f:F0}%)") : "") + " |");
            if (acc) sb.Append(r.TestAccuracy is double a ? FormattableString.Invariant($" {100 * a:F2}% |") : " – |");
            if (refr != null) sb.AppendLine(FormattableString.Invariant($" {refr.MedianSeconds / r.MedianSeconds:F2}x | {MemoryOf(r) / MemoryOf(refr):F2}x |"));
            else sb.AppendLine(" | |");
        }
        sb.AppendLine();
        var ok = results.Where(r => r.Error == null).ToList();
        if (ok.Count > 0)
        {
            var r0 = ok[0];
            sb.AppendLine(FormattableString.Invariant($"Speed vs {refr?.Precision}: its median step time divided by the policy's (above 1 = faster). Memory vs {refr?.Precision}: ") +
                (cuda ? "peak device memory ratio." : "peak RSS ratio (VmHWM of the policy's process, whole process: runtime, graphs, weights, gradients, optimizer state, activations).") +
                FormattableString.Invariant($" GFLOP/s: {r0.FlopsPerStep / 1e9:F2} GFLOP per step (2 x multiply-adds of the training graph's MatMul/Gemm/Conv nodes at batch {s.BatchSize}, shapes inferred) over the median step time; ") +
                (c.Peaks.Count > 0
                    ? "MatMul peak measured here (one MatMul " + c.PeakShape + " on ORT, best run): " + string.Join(", ", c.Peaks.Select(kv => FormattableString.Invariant($"{kv.Key} {kv.Value:F1} GFLOP/s"))) +
                      "; each policy is compared with the peak of the type most of its products run in."
                    : "MatMul peak not measured."));
            sb.AppendLine();
            sb.AppendLine("| policy | parameters | persistent state (MiB) | training nodes | 16-bit MatMul/Gemm/Conv | warm-up steps (s) | timed steps (s) | losses | skipped steps |");
            sb.AppendLine("|---|---|---|---|---|---|---|---|---|");
            foreach (var r in ok)
                sb.AppendLine(FormattableString.Invariant($"| {r.Precision} | {r.Parameters:N0} | {MiB(r.PersistentStateBytes)} | {r.TrainingNodes:N0} | {r.MatMulNodes16Bit} of {r.MatMulNodes} | {string.Join(", ", r.WarmupSeconds.Select(x => x.ToString("F2", Inv)))} | {string.Join(", ", r.StepSeconds.Select(x => x.ToString("F2", Inv)))} | {r.StepLosses.FirstOrDefault():F4} .. {r.StepLosses.LastOrDefault():F4} | {r.SkippedSteps} |"));
            if (ok.Any(r => r.Precision != "32-true" && r.MatMulNodes > 0 && r.MatMulNodes16Bit == 0))
                sb.AppendLine().AppendLine("A 16-bit policy with 0 16-bit MatMul/Gemm/Conv nodes computes them in fp32: the compiler keeps an op in fp32 when the provider has no 16-bit kernel for it (the kernel probe; ORT's CPU provider lacks most float16/bfloat16 MatMul/Gemm kernels). A mixed policy is then the fp32 graph (same node count as 32-true, same figures up to noise); a true policy stores parameters, gradients and optimizer state in 16-bit and casts around each fp32 MatMul.");
            if (ok.Any(r => r.DeviceMemoryNote != null && r.PeakDeviceBytes == null) && c.Device != "cpu")
                sb.AppendLine().AppendLine($"Device memory: {ok.First(r => r.DeviceMemoryNote != null).DeviceMemoryNote}.");
        }
        sb.AppendLine();
        foreach (var chart in new[] { TimeChart, MemoryChart, AccuracyChart, LossChart })
            if (chart != AccuracyChart && chart != LossChart || (chart == AccuracyChart ? acc : results.Any(r => r.EpochLosses.Count > 1)))
                sb.AppendLine($"![{Path.GetFileNameWithoutExtension(chart)}]({chart})");
        return sb.ToString();
    }

    public static string ProfileMarkdown(Context c, IReadOnlyList<PolicyResult> results)
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# Where the time goes: {c.Spec.Model}, batch {c.Spec.BatchSize}, {c.Device}");
        sb.AppendLine();
        sb.AppendLine($"ORT's profiler over {Math.Max(1, c.Spec.Steps)} full steps per policy (training graph + optimizer graph, " +
            "the same compiled graphs and session options as the timed steps, in profiling sessions; one more step run first and left out). " +
            "Kernel time summed per op type; \"optimizer:\" rows are the AdamW graph. Raw traces: profile/<policy>/*.json.");
        foreach (var r in results.Where(r => r.ProfileByOpType != null))
        {
            var p = new OpProfile { RunMicroseconds = r.ProfileRunMicroseconds ?? 0, Runs = r.ProfileRunMicroseconds > 0 ? 1 : 0 };
            foreach (var (k, v) in r.ProfileByOpType!) p.Microseconds[k] = v;
            foreach (var (k, v) in r.ProfileCalls!) p.Calls[k] = v;
            sb.AppendLine();
            sb.AppendLine($"## {r.Precision}");
            sb.AppendLine();
            sb.Append(p.ToMarkdown(Math.Max(1, c.Spec.Steps)));
        }
        return sb.ToString();
    }

    static readonly Color[] Palette = [Colors.SteelBlue, Colors.DarkOrange, Colors.SeaGreen, Colors.Crimson, Colors.MediumPurple, Colors.SaddleBrown, Colors.HotPink, Colors.Gray];

    static string Subtitle(Context c) => $"{c.Spec.Model}, batch {c.Spec.BatchSize}, {c.Spec.Optimizer}, {c.Device}";

    static Plot BarChart(string title, string yLabel, IReadOnlyList<string> names, IReadOnlyList<double> values, Func<double, string> label, double? yMax = null)
    {
        var plot = new Plot();
        var bars = new List<Bar>();
        for (int i = 0; i < names.Count; i++)
            bars.Add(new Bar { Position = i, Value = values[i], FillColor = Palette[i % Palette.Length], Label = label(values[i]), CenterLabel = true });
        var bp = plot.Add.Bars(bars);
        bp.ValueLabelStyle.FontSize = 15;
        bp.ValueLabelStyle.Bold = true;
        bp.ValueLabelStyle.ForeColor = Colors.White;
        bp.ValueLabelStyle.BackgroundColor = Colors.Black.WithAlpha(0.55);
        bp.ValueLabelStyle.Padding = 3;
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, names.Count).Select(i => (double)i).ToArray(), names.ToArray());
        plot.Axes.Bottom.TickLabelStyle.FontSize = 14;
        plot.Axes.Left.TickLabelStyle.FontSize = 13;
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Title(title, 16);
        plot.YLabel(yLabel, 14);
        plot.XLabel("precision policy", 14);
        plot.Axes.SetLimitsY(0, yMax ?? Math.Max(1e-9, values.DefaultIfEmpty(0).Max()) * 1.12);
        plot.HideGrid();
        plot.Grid.YAxisStyle.IsVisible = true;
        return plot;
    }

    static IEnumerable<string> Charts(string dir, Context c, IReadOnlyList<PolicyResult> results)
    {
        var ok = results.Where(r => r.Error == null).ToList();
        if (ok.Count == 0) yield break;
        var names = ok.Select(r => r.Precision).ToList();

        var time = BarChart($"Step time per precision policy ({Subtitle(c)})", "seconds per step (median; whiskers p10-p90)",
            names, ok.Select(r => r.MedianSeconds).ToList(), v => v.ToString(v < 1 ? "F3" : "F2", Inv) + " s");
        for (int i = 0; i < ok.Count; i++)
        {
            var line = time.Add.Line(i, ok[i].P10Seconds, i, ok[i].P90Seconds);
            line.LineWidth = 2; line.LineColor = Colors.Black;
            foreach (var yv in new[] { ok[i].P10Seconds, ok[i].P90Seconds })
            {
                var cap = time.Add.Line(i - 0.12, yv, i + 0.12, yv);
                cap.LineWidth = 2; cap.LineColor = Colors.Black;
            }
        }
        time.Axes.SetLimitsY(0, ok.Max(r => Math.Max(r.P90Seconds, r.MedianSeconds)) * 1.12);
        time.SavePng(Path.Combine(dir, TimeChart), 900, 560);
        yield return TimeChart;

        bool cuda = ok.Any(r => r.PeakDeviceBytes > 0);
        var mem = BarChart($"Peak {(cuda ? "device" : "host")} memory per precision policy ({Subtitle(c)})",
            cuda ? "peak device memory (MiB)" : "peak resident set size, VmHWM (MiB)",
            names, ok.Select(r => MemoryOf(r) / (1 << 20)).ToList(), v => v.ToString("N0", Inv) + " MiB");
        mem.SavePng(Path.Combine(dir, MemoryChart), 900, 560);
        yield return MemoryChart;

        if (ok.Any(r => r.TestAccuracy != null))
        {
            var acc = BarChart($"Test accuracy per precision policy ({c.Spec.Dataset}, {c.Spec.Epochs} epochs, {Subtitle(c)})", "test accuracy (%)",
                names, ok.Select(r => 100 * (r.TestAccuracy ?? 0)).ToList(), v => v.ToString("F2", Inv) + "%", yMax: 100);
            acc.SavePng(Path.Combine(dir, AccuracyChart), 900, 560);
            yield return AccuracyChart;
        }

        if (ok.Any(r => r.EpochLosses.Count > 1))
        {
            var plot = new Plot();
            for (int i = 0; i < ok.Count; i++)
            {
                var l = ok[i].EpochLosses;
                if (l.Count == 0) continue;
                var sm = Smooth(l, Math.Max(1, l.Count / 50));
                var sc = plot.Add.ScatterLine(Enumerable.Range(1, sm.Length).Select(v => (double)v).ToArray(), sm);
                sc.LegendText = ok[i].Precision; sc.LineWidth = 2; sc.Color = Palette[i % Palette.Length];
            }
            plot.Title($"Training loss ({c.Spec.Dataset}, {c.Spec.Epochs} epochs, {Subtitle(c)})", 16);
            plot.XLabel("optimizer step", 14);
            plot.YLabel("training loss (cross-entropy, moving average)", 14);
            plot.ShowLegend(Alignment.UpperRight);
            plot.SavePng(Path.Combine(dir, LossChart), 900, 560);
            yield return LossChart;
        }
    }

    static double[] Smooth(IReadOnlyList<float> v, int window)
    {
        var r = new double[v.Count];
        double sum = 0;
        for (int i = 0; i < v.Count; i++)
        {
            sum += v[i];
            if (i >= window) sum -= v[i - window];
            r[i] = sum / Math.Min(i + 1, window);
        }
        return r;
    }
}
