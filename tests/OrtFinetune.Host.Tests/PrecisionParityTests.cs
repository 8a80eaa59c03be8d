using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// Accuracy parity on real data (issues 5 and 17): every precision policy trains vit-tiny on Fashion-MNIST on the CPU
/// with the same settings and seed, and ends near 32-true's test accuracy, where "near" is measured in the test.
/// <para>
/// Why measured: one run's accuracy moves with the machine's kernels (MLAS rounds differently on an AMD EPYC and an
/// Intel Xeon), and the former test (5,000 images, 2 epochs, a 60 % level) put 16-true at -0.50 points on Intel and
/// -3.36 on AMD: the machine mattered more than the policy. So 32-true also trains on a second seed (other images,
/// initial weights and data order), and each run is held to max(<see cref="Tolerance"/>, <see cref="NoiseMultiple"/> x
/// that seed-to-seed spread): the bar rises with the noise the machine shows instead of being one machine's number.
/// The spread itself must stay under <see cref="MaxSpread"/>, or the setting is too noisy to judge anything.
/// </para>
/// <para>
/// Settings: more images, fewer epochs, smaller images: 1 epoch over <see cref="Images"/> images at <see cref="ImageSize"/> px
/// (16 patches of 4 px instead of 49 at 28 px, about a third of the cost per image), batch <see cref="BatchSize"/>. On a
/// 2-core AMD EPYC that reached 76 % (32-true, seeds 42 and 43: 76.43 / 75.75, spread 0.68) where the former
/// setting reached 62 %, and 28 px with 10,000 images stayed at 62 % with 16-true +3.08 points off: too noisy a level.
/// Seven runs (the former test: six of 10,000 samples at 28 px); per run about two thirds of the CPU time of a former run.
/// Measurements, machine kinds and times: docs/benchmarks.md, "CPU precision parity".
/// </para>
/// </summary>
[Trait("Category", "Slow"), Collection(SlowTraining.Name)]
public class PrecisionParityTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-parity-").FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    const string Data = "/usr/share/datasets/fashion-mnist";
    const int Images = 20_000, ImageSize = 16, Epochs = 1, BatchSize = 64, Seed = 42, NoiseSeed = 43;

    /// <summary>The floor of every tolerance: 1.5 points.</summary>
    const double Tolerance = 0.015;
    /// <summary>Each run may differ from 32-true by this multiple of 32-true's own seed-to-seed spread (when that is above the floor).</summary>
    const double NoiseMultiple = 2;
    /// <summary>Above this seed-to-seed spread the setting is too noisy to judge parity: the test fails and says so.</summary>
    const double MaxSpread = 0.03;
    /// <summary>32-true must learn: below this the setting (or the build) is broken, and parity would mean nothing.</summary>
    const double MinReferenceAccuracy = 0.70;
    /// <summary>The documented exception's looser bound: it must still learn, not diverge (the reference's 16-true fell to 10 %).</summary>
    const double LooseTolerance = 0.08;
    /// <summary>A hang guard per run, not a speed check: on the 2-core AMD EPYC a run took 0.7-1.8 minutes at loads of 3-10 and 16-18 at a load of 40.</summary>
    static readonly TimeSpan RunLimit = TimeSpan.FromMinutes(30);

    enum Hold { Reference, Noise, Parity, Exception }

    /// <summary>One run: label, policy, extra options, seed, how it is held and why.</summary>
    sealed record Spec(string Label, string Policy, string[] Extra, int Seed, Hold Hold, string Why);

    /// <summary>
    /// Every run and how it is held: the one place that lists the exceptions (the README points here).
    /// </summary>
    static readonly Spec[] Runs =
    [
        new("32-true", "32-true", [], Seed, Hold.Reference, "the base"),
        new("32-true (seed 43)", "32-true", [], NoiseSeed, Hold.Noise,
            "the noise the others must sit above: the same policy on other images, initial weights and data order"),
        new("16-mixed", "16-mixed", [], Seed, Hold.Parity, "fp32 master weights, allowlisted ops in float16, loss scaling (on the stock CPU package no 16-bit MatMul kernels: same losses as 32-true)"),
        new("bf16-mixed", "bf16-mixed", [], Seed, Hold.Parity, "as 16-mixed in bfloat16, without loss scaling"),
        new("16-true", "16-true", [], Seed, Hold.Parity, "float16 weights, gradients and optimizer state"),
        new("bf16-true", "bf16-true", [], Seed, Hold.Exception,
            "the documented exception: bfloat16 parameters with round-to-nearest AdamW updates. With an 8-bit mantissa most of each "
            + "small update is rounded away, so a short CPU run can end lower (former test: -1.3 to -5.7 across builds; 28 px, 10,000 images: "
            + "-1.63; this setting on an AMD EPYC: -0.49). Held to 8 points: "
            + "it must learn, not diverge; with --rounding kahan (next run) it is held to the normal tolerance. On an H200 with real bf16 math over "
            + "3 full epochs plain bf16-true ended -0.62 (docs/benchmarks.md)"),
        new("bf16-true --rounding kahan", "bf16-true", ["--rounding", "kahan"], Seed, Hold.Parity,
            "bfloat16 parameters with compensated (Kahan) updates: the fix for the exception above, held to the normal tolerance"),
    ];

    static readonly string[] Settings =
    [
        "--dataset", "fashion-mnist", "--data-dir", Data, "--model", "vit-tiny", "--image-size", ImageSize.ToString(CultureInfo.InvariantCulture), "--augment", "none",
        "--lr", "0.003", "--warmup-steps", "50", "--limit", Images.ToString(CultureInfo.InvariantCulture),
        "--epochs", Epochs.ToString(CultureInfo.InvariantCulture), "--batch-size", BatchSize.ToString(CultureInfo.InvariantCulture),
    ];

    sealed record Outcome(Spec Spec, int Code, double Accuracy, double TrainSeconds, double SamplesPerSecond, long PeakMb, long PersistentMb, long Skipped, double Wall);

    Outcome Train(Spec spec)
    {
        var run = Path.Combine(_tmp, string.Join("_", [spec.Policy, .. spec.Extra, spec.Seed.ToString(CultureInfo.InvariantCulture)]).Replace("-", ""));
        var psi = new ProcessStartInfo("dotnet", [TestPaths.HostDll, "train", .. Settings, "--seed", spec.Seed.ToString(CultureInfo.InvariantCulture),
            "--precision", spec.Policy, .. spec.Extra, "--output", run, "--plugins-dir", TestPaths.BuiltInPlugins])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = _tmp };
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(RunLimit)) { p.Kill(true); Assert.Fail($"{spec.Label}: ran past {RunLimit.TotalMinutes} minutes (a hang guard)"); }
        p.WaitForExit();
        var err = stderr.Result;
        if (p.ExitCode != 0) { log.WriteLine(err.Length > 3000 ? err[^3000..] : err); return new Outcome(spec, p.ExitCode, double.NaN, 0, 0, 0, 0, 0, clock.Elapsed.TotalSeconds); }
        var s = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "summary.json"))).RootElement;
        return new Outcome(spec, 0, s.GetProperty("test_accuracy").GetDouble(), s.GetProperty("train_seconds").GetDouble(),
            s.GetProperty("samples_per_second").GetDouble(), s.GetProperty("peak_memory_mb").GetInt64(), s.GetProperty("persistent_state_mb").GetInt64(),
            s.GetProperty("skipped_steps").GetInt64(), clock.Elapsed.TotalSeconds);
    }

    [Fact]
    public void EveryPolicyEndsWithinTheMeasuredNoiseOf32True()
    {
        Assert.True(Directory.Exists(Data), $"{Data} is missing: apt-get install dataset-fashion-mnist (.ci/run does)");
        var clock = Stopwatch.StartNew();
        var results = Runs.Select(Train).ToList();
        var reference = results.Single(r => r.Spec.Hold == Hold.Reference);
        var noise = results.Single(r => r.Spec.Hold == Hold.Noise);
        double spread = Math.Abs(noise.Accuracy - reference.Accuracy);
        double Allowed(Spec s) => Math.Max(s.Hold == Hold.Exception ? LooseTolerance : Tolerance, NoiseMultiple * spread);

        log.WriteLine($"vit-tiny on Fashion-MNIST ({ImageSize} px, {Images} training images, {Epochs} epoch, batch {BatchSize}, AdamW lr 0.003), CPU, "
            + $"{Environment.ProcessorCount} cores, {clock.Elapsed.TotalSeconds:F0} s in all; seed-to-seed spread of 32-true {spread * 100:F2} points:");
        log.WriteLine("| run | seed | test accuracy | vs 32-true | allowed | train time | images/s | peak memory | persistent state | skipped steps |");
        log.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var r in results)
            log.WriteLine($"| {r.Spec.Label} | {r.Spec.Seed} | {(r.Code == 0 ? r.Accuracy.ToString("P2") : $"exit {r.Code}")} | "
                + $"{(r.Accuracy - reference.Accuracy) * 100:+0.00;-0.00} pt | {(r.Spec.Hold is Hold.Parity or Hold.Exception ? $"{Allowed(r.Spec) * 100:F2} pt" : "-")} | "
                + $"{r.TrainSeconds:F1} s (wall {r.Wall:F0} s) | {r.SamplesPerSecond:F0} | {r.PeakMb} MB | {r.PersistentMb} MB | {r.Skipped} |");
        foreach (var r in results) log.WriteLine($"- {r.Spec.Label}: {r.Spec.Hold}; {r.Spec.Why}");

        Assert.True(reference.Code == 0 && noise.Code == 0, $"32-true failed: exit codes {reference.Code} (seed {Seed}), {noise.Code} (seed {NoiseSeed})");
        Assert.True(reference.Accuracy >= MinReferenceAccuracy && noise.Accuracy >= MinReferenceAccuracy,
            $"32-true reached only {reference.Accuracy:P2} (seed {Seed}) and {noise.Accuracy:P2} (seed {NoiseSeed}); at least {MinReferenceAccuracy:P0} expected");
        Assert.True(spread <= MaxSpread,
            $"32-true's seed-to-seed spread is {spread * 100:F2} points (more than {MaxSpread * 100} points): too noisy a setting to judge parity");
        foreach (var r in results.Where(r => r.Spec.Hold is Hold.Parity or Hold.Exception))
        {
            Assert.True(r.Code == 0, $"{r.Spec.Label} failed with exit code {r.Code}");
            double allowed = Allowed(r.Spec);
            Assert.True(Math.Abs(r.Accuracy - reference.Accuracy) <= allowed,
                $"{r.Spec.Label}: test accuracy {r.Accuracy:P2} is more than {allowed * 100:F2} points from 32-true's {reference.Accuracy:P2} "
                + $"(max of {(r.Spec.Hold == Hold.Exception ? LooseTolerance : Tolerance) * 100} points and {NoiseMultiple} x the seed-to-seed spread {spread * 100:F2})");
        }
    }
}

/// <summary>
/// The long training runs (Fashion-MNIST end to end, precision parity) run one after the other: on 2 cores,
/// side by side, each took twice as long and the end-to-end run passed its time limit.
/// </summary>
[CollectionDefinition(Name)]
public sealed class SlowTraining
{
    public const string Name = "slow-training";
}
