using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// Faults the ortfinetune executable must survive (issue 6): a full disk while writing checkpoints and
/// exports, NaN/Inf in 32-true and fp16 overflow in 16-mixed, SIGTERM/SIGINT during evaluation,
/// checkpoint writing and training, and plugins that throw. Each test runs the real executable as a
/// child process on tiny runs (vit-tiny at 16 px, a few hundred images), a few seconds each.
/// </summary>
[Trait("Category", "Reliability")]
public class ReliabilityTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-rel-").FullName;
    readonly List<string> _mounts = new();

    public void Dispose()
    {
        foreach (var m in _mounts) RunTool("umount", m);
        try { Directory.Delete(_tmp, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static string FaultyPluginDll => Path.Combine(TestPaths.Root, "tests", "TestPlugins", "FaultyPlugin", "bin", TestPaths.Configuration, "net10.0", "OrtFinetune.Tests.FaultyPlugin.dll");
    const string FaultyPluginName = "OrtFinetune.Tests.FaultyPlugin";

    // Small, fast runs: 256 images per split, 8 steps per epoch.
    static readonly string[] Shapes = ["--dataset", "shapes", "--model", "vit-tiny", "--image-size", "16", "--limit", "256", "--batch-size", "32", "--log-every", "1"];

    // ---- child-process helpers (as in EndToEndTests) ----

    sealed record Result(int Code, string Out, string Err, TimeSpan Elapsed)
    {
        public string All => Out + Err;
    }

    ProcessStartInfo Psi(string[] args, IDictionary<string, string>? env = null, string? shellPrefix = null)
    {
        string[] full = [TestPaths.HostDll, .. args];
        if (!args.Contains("--plugins-dir")) full = [.. full, "--plugins-dir", TestPaths.BuiltInPlugins];
        ProcessStartInfo psi;
        // A child inherits an ignored SIGINT (a test run started as `cmd &` from a script ignores it, as shells make
        // background jobs do), and then rightly ignores Ctrl-C: start it as a foreground process would be.
        if (shellPrefix == null && SigintIgnoredHere()) psi = new ProcessStartInfo("env", ["--default-signal=INT", "dotnet", .. full]);
        else if (shellPrefix == null) psi = new ProcessStartInfo("dotnet", full);
        else
        {
            // bash -c '<prefix>; exec dotnet "$@"' -- args...
            psi = new ProcessStartInfo("bash", ["-c", shellPrefix + "; exec dotnet \"$@\"", "bash", .. full]);
        }
        psi.RedirectStandardOutput = true; psi.RedirectStandardError = true; psi.UseShellExecute = false; psi.WorkingDirectory = _tmp;
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        return psi;
    }

    /// <summary>Whether this process ignores SIGINT (bit 1 of SigIgn in /proc/self/status).</summary>
    static bool SigintIgnoredHere()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:"));
        return line != null && (Convert.ToUInt64(line[7..].Trim(), 16) & (1UL << (SIGINT - 1))) != 0;
    }

    Result Run(string[] args, IDictionary<string, string>? env = null, string? shellPrefix = null, int limitSeconds = 120)
    {
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(Psi(args, env, shellPrefix))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(limitSeconds))) { p.Kill(true); Assert.Fail($"ortfinetune {string.Join(' ', args)} ran past {limitSeconds} s"); }
        p.WaitForExit();
        var r = new Result(p.ExitCode, stdout.Result, stderr.Result, clock.Elapsed);
        log.WriteLine($"$ ortfinetune {string.Join(' ', args)}  -> exit {r.Code} in {r.Elapsed.TotalSeconds:F1} s");
        log.WriteLine(Tail(r.Err, 2500));
        if (r.Out.Length > 0) log.WriteLine(Tail(r.Out, 1500));
        return r;
    }

    /// <summary><paramref name="baseArgs"/> (option-value pairs) with options replaced or added by <paramref name="overrides"/>.</summary>
    static string[] With(string[] baseArgs, params string[] overrides)
    {
        var pairs = new List<(string Key, string Value)>();
        for (int i = 0; i + 1 < baseArgs.Length; i += 2) pairs.Add((baseArgs[i], baseArgs[i + 1]));
        for (int i = 0; i + 1 < overrides.Length; i += 2)
        {
            int at = pairs.FindIndex(p => p.Key == overrides[i]);
            if (at >= 0) pairs[at] = (overrides[i], overrides[i + 1]); else pairs.Add((overrides[i], overrides[i + 1]));
        }
        return pairs.SelectMany(p => new[] { p.Key, p.Value }).ToArray();
    }

    static string Tail(string s, int n) => s.Length > n ? s[^n..] : s;

    static (int Code, string Output) RunTool(string file, params string[] args)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false })!;
            var o = p.StandardOutput.ReadToEndAsync(); var e = p.StandardError.ReadToEndAsync();
            p.WaitForExit();
            return (p.ExitCode, o.Result + e.Result);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, e.Message); }
    }

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);
    const int SIGINT = 2, SIGTERM = 15;

    static string Hash(string file) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));
    static JsonElement Json(string file) => JsonDocument.Parse(File.ReadAllText(file)).RootElement;

    static void NoTrace(Result r) => Assert.False(r.Err.Contains("   at ") || r.Err.Contains("Unhandled exception"), "unhandled-exception trace:\n" + r.Err);

    /// <summary>A finished one-epoch run (8 steps) whose checkpoint later runs resume from.</summary>
    string GoodRun(string dir, params string[] extra)
    {
        var r = Run(["train", .. Shapes, "--epochs", "1", "--output", dir, .. extra]);
        Assert.True(r.Code == 0, r.Err);
        return Path.Combine(dir, "checkpoints", "last.ckpt");
    }

    /// <summary>The checkpoint loads (format) and a trainer accepts it (the eval verb on the run folder).</summary>
    void AssertLoadable(string run, string ckpt, string? expectEpoch = null)
    {
        var ck = CheckpointFile.Load(ckpt);
        if (expectEpoch != null) Assert.Equal(expectEpoch, ck.Meta["user.epoch"]);
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(ckpt)!, "*.tmp-*"));
        var e = Run(["eval", "--run", run]);
        Assert.True(e.Code == 0, "eval of the checkpoint failed: " + e.Err);
        Assert.Contains("test accuracy", e.Out);
    }

    // ---- full disk ----

    /// <summary>
    /// A folder whose writes fail past a few megabytes. Preferred: a tmpfs of <paramref name="megabytes"/> MB
    /// (needs root and mount; ENOSPC, a real full disk). Fallback: none here, the caller then uses
    /// <see cref="FileSizeLimit"/> (RLIMIT_FSIZE with SIGXFSZ ignored: EFBIG, the same write failure path).
    /// </summary>
    string? SmallTmpfs(int megabytes)
    {
        if (TmpfsDisabled) { log.WriteLine("tmpfs disabled by ORTFT_TEST_NO_TMPFS=1; using ulimit -f"); return null; }
        var dir = Directory.CreateDirectory(Path.Combine(_tmp, $"tmpfs{_mounts.Count}")).FullName;
        var (code, output) = RunTool("mount", "-t", "tmpfs", "-o", $"size={megabytes}m", "tmpfs", dir);
        if (code != 0) { log.WriteLine($"tmpfs mount not possible ({output.Trim()}); falling back to ulimit -f"); return null; }
        _mounts.Add(dir);
        return dir;
    }

    /// <summary>
    /// Shell prefix: writes past <paramref name="kilobytes"/> KB fail with EFBIG. SIGXFSZ is ignored (else it kills the
    /// process), and W^X is off (its double-mapped memory file would itself exceed the limit and stop the runtime).
    /// </summary>
    static string FileSizeLimit(int kilobytes) => $"trap '' XFSZ; ulimit -f {kilobytes}; export DOTNET_EnableWriteXorExecute=0";

    /// <summary>Forces the fallback (ORTFT_TEST_NO_TMPFS=1) to check it where tmpfs works.</summary>
    static bool TmpfsDisabled => Environment.GetEnvironmentVariable("ORTFT_TEST_NO_TMPFS") == "1";

    [Fact]
    public void SelfTestOnTheCpuPassesAgainstAFreshProcess()
    {
        // CPU vs CPU in a child process: the same graphs, weights and batches, so every check must pass; the
        // gradient fixtures are PyTorch's. On a GPU the same verb compares the device with the CPU.
        var dir = Path.Combine(_tmp, "selftest");
        var r = Run(["selftest", "--device", "cpu", "--steps", "8", "--output", dir], limitSeconds: 300);
        Assert.True(r.Code == 0, r.Out + r.Err);
        Assert.Contains("all 17 checks passed", r.Out);
        var rows = Json(Path.Combine(dir, "selftest.json")).GetProperty("rows").EnumerateArray().ToList();
        Assert.Equal(17, rows.Count);
        Assert.All(rows, row => Assert.True(row.GetProperty("Pass").GetBoolean(), row.ToString()));
        var steps = Json(Path.Combine(dir, "selftest.json")).GetProperty("16-mixed_device").GetProperty("Steps").EnumerateArray().ToList();
        Assert.Equal(8, steps.Count);
        Assert.Equal(1, steps[0].GetProperty("StepRead").GetInt64());
        Assert.Equal(512f, steps[^1].GetProperty("LossScaleRead").GetSingle());   // 256, grown once after 4 finite steps

        var bad = Run(["selftest", "--device", "tpu"]);
        Assert.Equal(1, bad.Code);
        Assert.Contains("--device", bad.Err);
        NoTrace(bad);
    }

    [Fact]
    public void FullDiskDuringCheckpointIsReportedAndKeepsThePreviousCheckpoint()
    {
        // A vit-tiny checkpoint (parameters + AdamW moments) is ~5.3 MB: an 8 MB tmpfs holds one, not a second beside it.
        var fs = SmallTmpfs(8);
        string method = fs != null ? "tmpfs 8 MB (ENOSPC)" : "ulimit -f 2048 KB with SIGXFSZ ignored (EFBIG)";
        var run = Path.Combine(fs ?? _tmp, "run");
        var ckpt = GoodRun(run);
        var before = Hash(ckpt);

        var r = Run(["train", .. Shapes, "--epochs", "2", "--resume", ckpt], shellPrefix: fs == null ? FileSizeLimit(2048) : null);
        log.WriteLine($"full-disk method: {method}");
        Assert.NotEqual(0, r.Code);
        Assert.Equal(2, r.Code);
        Assert.Contains("last.ckpt", r.Err);
        Assert.Contains("could not write the checkpoint", r.Err);
        NoTrace(r);
        Assert.Equal(before, Hash(ckpt));
        AssertLoadable(run, ckpt, expectEpoch: "1");
    }

    [Fact]
    public void FullDiskDuringExportIsReportedAndLeavesNoFileUnderTheFinalName()
    {
        var run = Path.Combine(_tmp, "run");
        var ckpt = GoodRun(run);
        var before = Hash(ckpt);
        // The exported vit-tiny model is ~1.8 MB.
        var fs = SmallTmpfs(1);
        string method = fs != null ? "tmpfs 1 MB (ENOSPC)" : "ulimit -f 512 KB with SIGXFSZ ignored (EFBIG)";
        var target = Path.Combine(fs ?? Path.Combine(_tmp, "out"), "model.onnx");
        var r = Run(["export", "--run", run, "--to", target], shellPrefix: fs == null ? FileSizeLimit(512) : null);
        log.WriteLine($"full-disk method: {method}; files left: {string.Join(", ", Directory.Exists(Path.GetDirectoryName(target)) ? Directory.GetFiles(Path.GetDirectoryName(target)!).Select(Path.GetFileName) : [])}");
        Assert.NotEqual(0, r.Code);
        Assert.Contains(target, r.Err);
        Assert.Contains("could not write the exported model", r.Err);
        NoTrace(r);
        Assert.False(File.Exists(target), "a half-written model lies under the final name");
        Assert.Equal(before, Hash(ckpt));
    }

    // ---- damaged files ----

    [Fact]
    public void ResumeFromACheckpointWithAFlippedBitIsRefusedNamingTheFile()
    {
        // One bit flipped three quarters into the file (inside the tensor data, where only the checksum can tell).
        var run = Path.Combine(_tmp, "flip");
        var ckpt = GoodRun(run);
        var bytes = File.ReadAllBytes(ckpt);
        bytes[bytes.Length * 3 / 4] ^= 0x10;
        File.WriteAllBytes(ckpt, bytes);
        var r = Run(["train", .. Shapes, "--epochs", "2", "--resume", ckpt]);
        Assert.Equal(2, r.Code);
        Assert.Contains($"error: {ckpt}: checkpoint is corrupt (checksum", r.Err);
        NoTrace(r);
        Assert.Equal(bytes, File.ReadAllBytes(ckpt));   // refused before anything was written over it
    }

    // ---- numerical faults ----

    [Fact]
    public void NanIn32TrueStopsWithExitCode4AndKeepsTheLastGoodCheckpoint()
    {
        // Epoch 1 at a sane learning rate (checkpoint written), then SGD at lr 9.9 without clipping
        // (--max-grad-norm with an empty value): the weights blow up and the loss or a gradient becomes
        // inf/NaN a few epochs later (epoch 4 on the reference machine).
        var run = Path.Combine(_tmp, "nan");
        string[] sgd = ["--optimizer", "sgd", "--precision", "32-true"];
        var ckpt = GoodRun(run, [.. sgd, "--lr", "0.01"]);
        var r = Run(["train", .. Shapes, .. sgd, "--epochs", "10", "--lr", "9.9", "--schedule", "constant", "--warmup-steps", "0", "--max-grad-norm", "", "--resume", ckpt]);
        Assert.Equal(4, r.Code);
        var m = System.Text.RegularExpressions.Regex.Match(r.Err, @"error: (the loss became (NaN|-?∞|-?Infinity)|a gradient became infinite or NaN) at step (\d+) \(epoch (\d+)\)");
        Assert.True(m.Success, "no NaN/Inf message:\n" + r.Err);
        int badEpoch = int.Parse(m.Groups[4].Value);
        log.WriteLine($"diverged at step {m.Groups[3].Value}, epoch {badEpoch}: {m.Value}");
        Assert.True(badEpoch >= 2, "the NaN should come after the epoch-1 checkpoint");
        Assert.Contains(ckpt, r.Err);            // the message names the last good checkpoint
        NoTrace(r);
        // The last good checkpoint is the one written at the end of the epoch before the NaN; its values are finite.
        var ck = CheckpointFile.Load(ckpt);
        Assert.Equal((badEpoch - 1).ToString(), ck.Meta["user.epoch"]);
        foreach (var t in ck.Tensors) Assert.True(t.ToFloats().All(float.IsFinite), $"tensor {t.Name} of the last good checkpoint is not finite");
        Assert.False(Json(Path.Combine(run, "summary.json")).GetProperty("epochs").GetInt32() == 10, "no summary for the failed run");
        AssertLoadable(run, ckpt, expectEpoch: (badEpoch - 1).ToString());
    }

    /// <summary>The run's vit-tiny exported, re-imported as an "onnx" model with input mean 0.5 and std <paramref name="std"/>.</summary>
    string ModelWithStd(string baseRun, string std)
    {
        var file = Path.Combine(_tmp, $"vit-std-{std}.onnx");
        var r = Run(["debug-set-metadata", "--model", Path.Combine(baseRun, "model.onnx"), "--output", file, "--set", "ortfinetune.mean=0.5,0.5,0.5", $"ortfinetune.std={std},{std},{std}"]);
        Assert.True(r.Code == 0, r.Err);
        return file;
    }

    [Fact]
    public void SixteenMixedReportsACollapsingLossScaleWithExitCode4()
    {
        // Input std 1e-45 (a float32 subnormal): normalized inputs are +-inf, so the loss and every gradient
        // are NaN whatever the scale. The scaler skips each step and halves the scale from 65536 until it
        // would pass its floor (2^-24, 41 halvings, ~5 epochs of 8 steps): the run stops with exit code 4,
        // it does not loop through all 20 epochs. Epochs whose evaluation is NaN are logged (metrics: null).
        var baseRun = Path.Combine(_tmp, "base");
        GoodRun(baseRun);
        var nan = ModelWithStd(baseRun, "1e-45");
        var run = Path.Combine(_tmp, "collapse");
        var c = Run(["train", .. With(Shapes, "--model", "onnx", "--model-file", nan), "--precision", "16-mixed", "--epochs", "20", "--output", run], limitSeconds: 180);
        Assert.Equal(4, c.Code);
        Assert.Contains("loss scale fell below", c.Err);
        NoTrace(c);
        log.WriteLine("collapse: " + c.Err.Split('\n').First(l => l.Contains("loss scale fell below")));
        Assert.DoesNotContain("epoch 20/20", c.Err);
        // The checkpoints written meanwhile are loadable and carry the scaler state.
        var ck = CheckpointFile.Load(Path.Combine(run, "checkpoints", "last.ckpt"));
        Assert.True(long.Parse(ck.Meta["scaler.skipped_steps"]) >= 8);
        Assert.Contains("\"val_loss\":null", File.ReadAllText(Path.Combine(run, "metrics.jsonl")));
    }

    [Fact]
    public void LossScalerAbsorbsFp16OverflowAndCountsSkippedSteps()
    {
        // On the CPU, 16-mixed computes in fp32 (this ORT CPU build has no fp16 MatMul/Gemm kernel, so the
        // autocast MatMuls are wrapped back to fp32: see precision_report.txt), so its gradients cannot
        // overflow. Gradients stored in fp16 do: 16-true with --loss-scaling true, batch 4, overflows at the
        // initial scale 65536; the scaler skips that update, halves the scale and training goes on.
        var run = Path.Combine(_tmp, "absorb");
        var r = Run(["train", .. With(Shapes, "--batch-size", "4"), "--precision", "16-true", "--loss-scaling", "true", "--epochs", "1", "--output", run]);
        Assert.True(r.Code == 0, r.Err);
        var s = Json(Path.Combine(run, "summary.json"));
        long skipped = s.GetProperty("skipped_steps").GetInt64(), steps = s.GetProperty("steps").GetInt64();
        double scale = s.GetProperty("loss_scale").GetDouble();
        log.WriteLine($"16-true + loss scaling, batch 4: {skipped} skipped of {skipped + steps} steps, final scale {scale}, final loss {s.GetProperty("final_loss")}");
        Assert.True(skipped > 0, "expected the scaler to skip an overflowing step");
        Assert.Equal(64, skipped + steps);
        Assert.True(scale < 65536);
        Assert.Equal(JsonValueKind.Number, s.GetProperty("final_loss").ValueKind);
        Assert.Equal(skipped.ToString(), CheckpointFile.Load(Path.Combine(run, "checkpoints", "last.ckpt")).Meta["scaler.skipped_steps"]);

        // 16-mixed on the same data: the scaler is active (scale in the summary) and nothing overflows on the CPU.
        var mixed = Path.Combine(_tmp, "mixed");
        var m = Run(["train", .. With(Shapes, "--batch-size", "4"), "--precision", "16-mixed", "--epochs", "1", "--output", mixed]);
        Assert.True(m.Code == 0, m.Err);
        var ms = Json(Path.Combine(mixed, "summary.json"));
        log.WriteLine($"16-mixed, batch 4: {ms.GetProperty("skipped_steps")} skipped, scale {ms.GetProperty("loss_scale")}");
        Assert.Equal(JsonValueKind.Number, ms.GetProperty("loss_scale").ValueKind);
    }

    [Fact]
    public void ModelWithAZeroStdIsAClearErrorNamingThePlugin()
    {
        var baseRun = Path.Combine(_tmp, "base");
        GoodRun(baseRun);
        var bad = ModelWithStd(baseRun, "0");
        var r = Run(["train", .. With(Shapes, "--model", "onnx", "--model-file", bad), "--output", Path.Combine(_tmp, "zero")]);
        Assert.Equal(2, r.Code);
        Assert.Contains("plugin 'OrtFinetune.Plugins.Models': model 'onnx' has an invalid input normalization", r.Err);
        NoTrace(r);
    }

    // ---- cancellation ----

    sealed class Child : IDisposable
    {
        public required Process P;
        public required Task<string> Out, Err;
        public void Dispose() { if (!P.HasExited) P.Kill(true); P.Dispose(); }
    }

    Child StartChild(string[] args, IDictionary<string, string>? env = null)
    {
        var p = Process.Start(Psi(args, env))!;
        return new Child { P = p, Out = p.StandardOutput.ReadToEndAsync(), Err = p.StandardError.ReadToEndAsync() };
    }

    /// <summary>Signals the child and waits for it; returns the seconds from signal to exit.</summary>
    double SignalAndWait(Child c, int sig, int limitSeconds = 20)
    {
        var clock = Stopwatch.StartNew();
        Assert.Equal(0, kill(c.P.Id, sig));
        Assert.True(c.P.WaitForExit(TimeSpan.FromSeconds(limitSeconds)), $"did not stop within {limitSeconds} s of signal {sig}");
        c.P.WaitForExit();
        log.WriteLine(Tail(c.Err.Result, 2500));
        return clock.Elapsed.TotalSeconds;
    }

    static void WaitFor(Child c, Func<bool> cond, string what, int seconds = 120)
    {
        var clock = Stopwatch.StartNew();
        while (!cond())
        {
            if (c.P.HasExited) Assert.Fail($"ended before {what}: " + c.Err.Result);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(seconds), $"no {what} after {seconds} s");
            Thread.Sleep(5);
        }
    }

    static int MetricLines(string run)
    {
        var f = Path.Combine(run, "metrics.jsonl");
        if (!File.Exists(f)) return 0;
        using var fs = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var rd = new StreamReader(fs);
        int n = 0;
        while (rd.ReadLine() is { } line) if (line.EndsWith('}')) n++;
        return n;
    }

    void AssertResumes(string run, string ckpt, string[] args, int epochs)
    {
        var r = Run(["train", .. args, "--epochs", epochs.ToString(), "--resume", ckpt]);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("resumed from", r.All);
        Assert.Equal(epochs, Json(Path.Combine(run, "summary.json")).GetProperty("epochs").GetInt32());
    }

    [Fact]
    public void SigtermDuringEvaluationSavesAConsistentCheckpoint()
    {
        // slow-eval: 64 training images (4 steps of 16), validation reads take 60 ms each (~2 s per evaluation).
        var plugins = FaultyPluginsFolder();
        var run = Path.Combine(_tmp, "eval");
        string[] args = ["--plugins-dir", TestPaths.BuiltInPlugins, plugins, "--dataset", "slow-eval", "--model", "vit-tiny", "--image-size", "16",
            "--limit", "64", "--batch-size", "16", "--log-every", "1", "--output", run];
        var env = new Dictionary<string, string> { ["ORTFT_SLOW_EVAL_MS"] = "60" };
        using var c = StartChild(["train", .. args, "--epochs", "2"], env);
        // The 4th step's metric line is written right before the end-of-epoch evaluation starts.
        WaitFor(c, () => MetricLines(run) >= 4, "4 training steps");
        Thread.Sleep(300);
        double secs = SignalAndWait(c, SIGTERM);
        log.WriteLine($"SIGTERM during evaluation: exited {c.P.ExitCode} after {secs:F1} s");
        Assert.Equal(130, c.P.ExitCode);
        Assert.True(secs < 10, $"took {secs:F1} s to stop");
        Assert.DoesNotContain("epoch 1/2: train loss", c.Err.Result);   // the evaluation was cut short
        var ckpt = Path.Combine(run, "checkpoints", "last.ckpt");
        var ck = CheckpointFile.Load(ckpt);
        Assert.Equal("4", ck.Meta["step"]);
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(ckpt)!, "*.tmp-*"));
        AssertResumes(run, ckpt, args, 2);
        Assert.Equal(8, Json(Path.Combine(run, "summary.json")).GetProperty("steps").GetInt64());
    }

    [Fact]
    public void SigtermDuringCheckpointWritingSavesAConsistentCheckpoint()
    {
        // --checkpoint-every 1: a checkpoint (~5.3 MB, written to last.ckpt.tmp-PID, fsync'ed, renamed) after every
        // step. The signal is sent the moment the temporary file appears, i.e. while a checkpoint is being written.
        var run = Path.Combine(_tmp, "ckpt");
        string[] args = [.. Shapes, "--checkpoint-every", "1", "--output", run];
        int attempts = 0, hits = 0;
        var dir = Path.Combine(run, "checkpoints");
        for (; attempts < 3 && hits == 0; attempts++)
        {
            using var c = StartChild(["train", .. args, "--epochs", "30"]);
            WaitFor(c, () => MetricLines(run) >= 3, "3 training steps");
            WaitFor(c, () => Directory.Exists(dir) && Directory.EnumerateFiles(dir, "last.ckpt.tmp-*").Any(), "a checkpoint being written", 60);
            int sent = kill(c.P.Id, SIGTERM);
            bool during = Directory.EnumerateFiles(dir, "last.ckpt.tmp-*").Any();
            Assert.Equal(0, sent);
            var clock = Stopwatch.StartNew();
            Assert.True(c.P.WaitForExit(TimeSpan.FromSeconds(20)), "did not stop within 20 s of SIGTERM");
            c.P.WaitForExit();
            log.WriteLine($"attempt {attempts + 1}: temporary file still present right after the signal: {during}; exit {c.P.ExitCode} after {clock.Elapsed.TotalSeconds:F1} s");
            Assert.Equal(130, c.P.ExitCode);
            Assert.True(clock.Elapsed.TotalSeconds < 10);
            var ckpt = Path.Combine(dir, "last.ckpt");
            var ck = CheckpointFile.Load(ckpt);
            Assert.True(long.Parse(ck.Meta["step"]) >= 3);
            Assert.Empty(Directory.GetFiles(dir, "*.tmp-*"));
            if (during) hits++;
        }
        log.WriteLine($"{attempts} attempts, {hits} with the signal landing during a checkpoint write");
        Assert.True(hits > 0, "the signal never landed during a checkpoint write");
        AssertResumes(run, Path.Combine(dir, "last.ckpt"), args, 2);
    }

    [Fact]
    public void SigintDuringTrainingSavesAConsistentCheckpoint()
    {
        var run = Path.Combine(_tmp, "sigint");
        string[] args = [.. Shapes, "--output", run];
        using var c = StartChild(["train", .. args, "--epochs", "30"]);
        WaitFor(c, () => MetricLines(run) >= 3, "3 training steps");
        double secs = SignalAndWait(c, SIGINT);
        log.WriteLine($"SIGINT during training: exited {c.P.ExitCode} after {secs:F1} s");
        Assert.Equal(130, c.P.ExitCode);
        Assert.True(secs < 10, $"took {secs:F1} s to stop");
        var ckpt = Path.Combine(run, "checkpoints", "last.ckpt");
        Assert.True(long.Parse(CheckpointFile.Load(ckpt).Meta["step"]) >= 3);
        AssertResumes(run, ckpt, args, 1);
    }

    // ---- plugins ----

    /// <summary>A plugins folder holding only the faulty test plugin.</summary>
    string FaultyPluginsFolder(string? parent = null)
    {
        Assert.True(File.Exists(FaultyPluginDll), $"{FaultyPluginDll} is missing (built with the test project)");
        var root = Path.Combine(parent ?? Path.Combine(_tmp, "extra"), "plugins");
        var dir = Directory.CreateDirectory(Path.Combine(root, FaultyPluginName)).FullName;
        File.Copy(FaultyPluginDll, Path.Combine(dir, FaultyPluginName + ".dll"), true);
        return root;
    }

    static Dictionary<string, string> Snapshot(string dir) =>
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(dir, f), Hash);

    [Fact]
    public void PluginThatThrowsAtLoadIsReportedByNameAndLeavesTheRunFolderAlone()
    {
        var run = Path.Combine(_tmp, "good");
        var ckpt = GoodRun(run);
        var before = Snapshot(run);
        var plugins = FaultyPluginsFolder();
        var env = new Dictionary<string, string> { ["ORTFT_FAULTY_CONFIGURE"] = "1" };

        var list = Run(["plugins", "--plugins-dir", TestPaths.BuiltInPlugins, plugins], env);
        Assert.Equal(2, list.Code);
        Assert.Contains(FaultyPluginName, list.Out);
        Assert.Contains("Configure exploded on purpose", list.Out);
        Assert.Contains("dataset shapes", list.Out);     // the other plugins still load

        var r = Run(["train", .. With(Shapes, "--dataset", "slow-eval", "--epochs", "2", "--resume", ckpt), "--plugins-dir", TestPaths.BuiltInPlugins, plugins], env);
        Assert.NotEqual(0, r.Code);
        Assert.Contains($"plugin {FaultyPluginName}", r.All);
        Assert.Contains("Configure failed", r.All);
        Assert.Contains("dataset 'slow-eval' is not provided by any loaded plugin", r.Err);
        NoTrace(r);
        Assert.Equal(before, Snapshot(run));
    }

    [Fact]
    public void PluginThatThrowsAtUseIsReportedByNameAndLeavesTheRunFolderAlone()
    {
        var run = Path.Combine(_tmp, "good");
        var ckpt = GoodRun(run);
        var before = Snapshot(run);
        var plugins = FaultyPluginsFolder();

        // Open throws InvalidOperationException (not the DatasetException the contract asks for).
        var r = Run(["train", .. With(Shapes, "--dataset", "faulty-open", "--epochs", "2", "--resume", ckpt), "--plugins-dir", TestPaths.BuiltInPlugins, plugins]);
        Assert.Equal(2, r.Code);
        Assert.Contains($"plugin '{FaultyPluginName}' failed to open dataset 'faulty-open'", r.Err);
        Assert.Contains("Open exploded on purpose", r.Err);
        NoTrace(r);
        Assert.Equal(before, Snapshot(run));

        // Get throws while batches are loaded: the loader names the dataset and sample.
        var g = Run(["train", .. With(Shapes, "--dataset", "faulty-get", "--batch-size", "16", "--epochs", "2", "--output", Path.Combine(_tmp, "get")), "--plugins-dir", TestPaths.BuiltInPlugins, plugins]);
        Assert.Equal(2, g.Code);
        Assert.Contains("faulty-get/train: sample", g.Err);
        Assert.Contains("Get(", g.Err);
        NoTrace(g);
        Assert.Equal(before, Snapshot(run));
    }

    [Fact]
    public void PluginsLoadOnlyFromTheConfiguredFolders()
    {
        // A plugin in the working folder's ./plugins ...
        FaultyPluginsFolder(_tmp);
        // ... is not loaded when --plugins-dir points elsewhere,
        var r = Run(["plugins", "--plugins-dir", TestPaths.BuiltInPlugins]);
        Assert.Equal(0, r.Code);
        Assert.DoesNotContain(FaultyPluginName, r.Out);
        Assert.Contains("dataset shapes", r.Out);
        // nor from an unrelated folder next to it,
        var other = FaultyPluginsFolder(Path.Combine(_tmp, "elsewhere"));
        Assert.DoesNotContain(FaultyPluginName, Run(["plugins", "--plugins-dir", TestPaths.BuiltInPlugins]).Out);
        // and is loaded once its folder is configured.
        var both = Run(["plugins", "--plugins-dir", TestPaths.BuiltInPlugins, other]);
        Assert.Contains(FaultyPluginName, both.Out);
        Assert.Contains("dataset faulty-open", both.Out);
        // Without --plugins-dir, the default folder "plugins" (appsettings.json) is the one next to the
        // executable, never the working folder's ./plugins (HostSetup.PluginFolders).
        var dflt = Run(["plugins"]);
        Assert.DoesNotContain(FaultyPluginName, dflt.Out);
        // An explicit relative --plugins-dir is relative to the working folder, as any path argument.
        var explicitRelative = Run(["plugins", "--plugins-dir", "plugins"]);
        Assert.Contains(FaultyPluginName, explicitRelative.Out);
    }
}
