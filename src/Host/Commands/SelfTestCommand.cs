using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.SelfTest;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Commands;

/// <summary>
/// <c>ortfinetune selftest --device cuda[:N]</c>: is training on this device right? (1) The PyTorch gradient
/// fixtures run on the device (<see cref="GradientParityCheck"/>). (2) The same short training run
/// (<see cref="TrajectoryCheck"/>) on the CPU in this process and on the device in a fresh child process,
/// 32-true and 16-mixed: per-step losses compared, and the per-step scalars the device read compared with
/// the ones the host meant. Prints a pass/fail table; exit 0 when everything passes, 5 otherwise. With
/// <c>--device cpu</c> the child runs on the CPU too, which must pass trivially.
/// </summary>
public static class SelfTestCommand
{
    const string ChildVerb = "trajectory";
    static readonly string[] Precisions = ["32-true", "16-mixed"];
    static readonly Dictionary<string, double> LossTolerance = new() { ["32-true"] = 1e-3, ["16-mixed"] = 2e-2 };
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public static Command Create(Option<string[]> pluginDirs)
    {
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps of the training comparison", DefaultValueFactory = _ => 30 };
        var output = new Option<string?>("--output") { Description = "Folder for selftest.json (every figure of the table, per step)" };
        var cmd = new Command("selftest", "Check training on a device against the CPU and PyTorch: gradient fixtures, per-step losses and the learning rate, step, loss scale and accumulation the device really used.")
        {
            device, steps, output,
        };
        cmd.SetAction(r =>
        {
            DeviceSpec d;
            try { d = DeviceSpec.Parse(r.GetValue(device)!); }
            catch (TrainingException e) { Console.Error.WriteLine($"error: --device: {e.Message}"); return ExitCodes.Usage; }
            int n = r.GetValue(steps);
            if (n < 6) { Console.Error.WriteLine($"error: --steps {n}: at least 6 (the warm-up is 5 steps)"); return ExitCodes.Usage; }
            using var host = HostSetup.CreateBuilder(PluginsCommand.PluginDirConfig(r, pluginDirs), false).Build();
            try { return Run(host.Services.GetRequiredService<PluginCatalog>(), d, n, r.GetValue(output), r.GetValue(pluginDirs) ?? []); }
            catch (Exception e) when (TrainCommand.Classify(e) is int code)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return code;
            }
        });

        var precision = new Option<string>("--precision") { Required = true };
        var result = new Option<string>("--result") { Required = true };
        var child = new Command(ChildVerb, "One side of the training comparison (used by 'selftest').") { device, steps, precision, result };
        child.Hidden = true;
        child.SetAction(r =>
        {
            using var host = HostSetup.CreateBuilder(PluginsCommand.PluginDirConfig(r, pluginDirs), false).Build();
            var t = TrajectoryCheck.Run(host.Services.GetRequiredService<PluginCatalog>(), DeviceSpec.Parse(r.GetValue(device)!), r.GetValue(precision)!, r.GetValue(steps));
            File.WriteAllText(r.GetValue(result)!, JsonSerializer.Serialize(t, Json));
            return ExitCodes.Ok;
        });
        cmd.Subcommands.Add(child);
        return cmd;
    }

    sealed record Row(string Check, string Expected, string Measured, bool Pass);

    static int Run(PluginCatalog catalog, DeviceSpec device, int steps, string? output, string[] pluginDirs)
    {
        var clock = Stopwatch.StartNew();
        var rows = new List<Row>();
        var report = new Dictionary<string, object> { ["device"] = device.ToString(), ["steps"] = steps };

        var parity = GradientParityCheck.Run(device);
        report["gradient_parity"] = parity;
        foreach (var p in parity)
            rows.Add(new Row($"gradients vs PyTorch: {p.Case}", $"rel err <= {GradientParityCheck.Tolerance:G2}", $"{p.MaxRelErr:E1} ({p.Worst})", p.MaxRelErr <= GradientParityCheck.Tolerance));

        var tmp = Directory.CreateTempSubdirectory("ortfinetune-selftest-").FullName;
        try
        {
            foreach (var precision in Precisions)
            {
                var cpu = TrajectoryCheck.Run(catalog, DeviceSpec.Cpu, precision, steps);
                var dev = RunChild(device, precision, steps, Path.Combine(tmp, precision + ".json"), pluginDirs);
                report[$"{precision}_cpu"] = cpu;
                report[$"{precision}_device"] = dev;
                rows.AddRange(Compare(precision, cpu, dev, device));
            }
        }
        finally { Directory.Delete(tmp, true); }

        int w = rows.Max(r => r.Check.Length), e = rows.Max(r => r.Expected.Length), m = rows.Max(r => r.Measured.Length);
        Console.WriteLine($"self-check on {device} ({steps} steps per run, {clock.Elapsed.TotalSeconds:F0} s):");
        Console.WriteLine($"{"check".PadRight(w)} | {"expected".PadRight(e)} | {"measured".PadRight(m)} | result");
        foreach (var r in rows) Console.WriteLine($"{r.Check.PadRight(w)} | {r.Expected.PadRight(e)} | {r.Measured.PadRight(m)} | {(r.Pass ? "pass" : "FAIL")}");
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine(failed == 0 ? $"all {rows.Count} checks passed" : $"{failed} of {rows.Count} checks FAILED");
        if (output != null)
        {
            report["rows"] = rows;
            Directory.CreateDirectory(output);
            File.WriteAllText(Path.Combine(output, "selftest.json"), JsonSerializer.Serialize(report, Json));
        }
        return failed == 0 ? ExitCodes.Ok : ExitCodes.SelfTestFailed;
    }

    static IEnumerable<Row> Compare(string precision, TrajectoryCheck.Trajectory cpu, TrajectoryCheck.Trajectory dev, DeviceSpec device)
    {
        var s = dev.Steps;
        int n = s.Count;
        string Count(Func<TrajectoryCheck.Step, bool> ok) => $"{s.Count(ok)}/{n} steps";
        Row Scalar(string what, Func<TrajectoryCheck.Step, bool> ok) => new($"{precision}: {what} read on {device}", "as set by the host", Count(ok), s.All(ok));

        double worst = cpu.Steps.Zip(s, (a, b) => Math.Abs(b.Loss - a.Loss) / Math.Max(Math.Abs(a.Loss), 1e-12)).Max();
        yield return new Row($"{precision}: losses {device} vs cpu", $"max rel err <= {LossTolerance[precision]:G2}", $"{worst:E1} (first {s[0].Loss:F4}, last {s[^1].Loss:F4})", worst <= LossTolerance[precision]);
        yield return Scalar("learning rate", x => x.LearningRateRead == x.LearningRate);
        yield return Scalar("Adam step", x => x.StepRead == x.StepMeant);
        yield return Scalar("accumulation reset", x => x.ResetReadAsMeant);
        yield return Scalar("gradient divisor", x => x.GradScaleRead == x.LossScale);
        if (precision == "16-mixed")
        {
            yield return Scalar("loss scale", x => x.LossScaleRead == x.LossScale);
            var scales = string.Join(" ", s.Select(x => x.LossScale).Distinct().Select(v => v.ToString("G", CultureInfo.InvariantCulture)));
            bool same = cpu.Steps.Select(x => x.LossScale).SequenceEqual(s.Select(x => x.LossScale));
            bool changed = s.Select(x => x.LossScale).Distinct().Count() > 1;
            yield return new Row($"{precision}: loss scale per step {device} vs cpu", "the same, and changing", scales, same && changed);
        }
    }

    static TrajectoryCheck.Trajectory RunChild(DeviceSpec device, string precision, int steps, string result, string[] pluginDirs)
    {
        var args = new List<string> { "selftest", ChildVerb, "--device", device.ToString(), "--precision", precision, "--steps", steps.ToString(CultureInfo.InvariantCulture), "--result", result };
        foreach (var d in pluginDirs) args.AddRange(["--plugins-dir", Path.GetFullPath(d)]);
        var psi = HostSetup.SelfProcess(args);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        if (p.ExitCode != 0 || !File.Exists(result))
        {
            var tail = string.Join(" / ", err.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).TakeLast(3));
            throw new TrainingException($"the {precision} run on {device} (a child process) failed with exit code {p.ExitCode}: {tail}");
        }
        return JsonSerializer.Deserialize<TrajectoryCheck.Trajectory>(File.ReadAllText(result))!;
    }
}
