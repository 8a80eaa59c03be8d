using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.Training;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>
/// One precision policy, measured in its own process (the hidden <c>benchmark run-policy</c> verb) so that
/// VmHWM is that policy's peak: setup through the plugins as <see cref="TrainRun"/> does, warm-up and
/// timed full steps on a synthetic batch, optionally epochs on a real dataset, optionally a profile.
/// </summary>
public static class BenchmarkChild
{
    public static PolicyResult Run(BenchmarkSpec s, ILogger log, CancellationToken ct)
    {
        var r = new PolicyResult { Precision = s.Precision, Device = s.Device };
        var device = DeviceSpec.Parse(s.Device);
        DeviceSpec.UseProcessThreadPool(s.Threads);
        var gpu = GpuMemory.TryOpen(device, out var why);
        r.DeviceMemoryNote = why;
        var setupClock = Stopwatch.StartNew();
        var (created, setup, splits, options, classes) = Prepare(s, device, r, log);
        // As train does: the trainer holds its own copy of the weights, so the host copies go, from this frame (Prepare's
        // temporaries held them until it returned). Profile and epochs compile sessions of their own from them: kept.
        if (setup.Artifacts == null) HostMemory.Release();
        var compiled = setup.Artifacts;
        var model = setup.Model;
        long[] dims = [s.BatchSize, model.Channels, model.ImageSize, model.ImageSize];
        var (pixels, labelData) = SyntheticBatch(dims, classes);
        using var x = OrtValue.CreateTensorValueFromMemory(pixels, dims);
        using var y = OrtValue.CreateTensorValueFromMemory(labelData, [s.BatchSize]);
        using (var trainer = created)
        {
            MemNote(log, "trainer ready");
            r.SetupSeconds = setupClock.Elapsed.TotalSeconds;
            r.PersistentStateBytes = trainer.PersistentBytes;
            trainer.SetLearningRate((float)s.Lr);
            for (int i = 0; i < s.Warmup + s.Steps; i++)
            {
                ct.ThrowIfCancellationRequested();
                var clock = Stopwatch.StartNew();
                trainer.LazyResetGrad();
                var step = trainer.TrainStep([x], y);
                trainer.OptimizerStep();
                double sec = clock.Elapsed.TotalSeconds;
                gpu?.Sample();
                if (i < s.Warmup) r.WarmupSeconds.Add(sec);
                else { r.StepSeconds.Add(sec); r.StepLosses.Add(step.Loss); }
                MemNote(log, "after step");
                log.LogInformation("{Policy} {Kind} step {N}: {Seconds:F3} s, loss {Loss:F4}", s.Precision, i < s.Warmup ? "warm-up" : "timed", i < s.Warmup ? i + 1 : i - s.Warmup + 1, sec, step.Loss);
            }
            r.SkippedSteps = trainer.Scaler?.SkippedSteps ?? 0;
        }
        // Peak memory of the step benchmark, before the epochs' data loader and the profile sessions add theirs.
        r.PeakRssBytes = Machine.PeakRssBytes();
        if (gpu != null) r.PeakDeviceBytes = gpu.Peak;
        var sorted = r.StepSeconds.Order().ToList();
        r.MedianSeconds = Percentile(sorted, 0.5);
        r.P10Seconds = Percentile(sorted, 0.1);
        r.P90Seconds = Percentile(sorted, 0.9);
        r.SamplesPerSecond = r.MedianSeconds > 0 ? s.BatchSize / r.MedianSeconds : 0;
        r.AchievedGflops = r.MedianSeconds > 0 ? r.FlopsPerStep / r.MedianSeconds / 1e9 : 0;

        if (s.Epochs > 0 && splits != null) RunEpochs(s, setup, splits, options, r, log, ct);
        if (s.Profile)
        {
            var dir = Path.Combine(s.Output, "profile", s.Precision);
            var profile = ProfileRunner.Run(compiled, setup.Optimizer, device, s.Threads, s.CpuArena, x, y, Math.Max(1, s.Steps), dir, m => log.LogInformation("{Policy}: {Message}", s.Precision, m));
            r.ProfileByOpType = profile.Microseconds;
            r.ProfileCalls = profile.Calls;
            r.ProfileRunMicroseconds = profile.RunMicroseconds;
            File.WriteAllText(Path.Combine(dir, "by_op_type.md"), profile.ToMarkdown(Math.Max(1, s.Steps)));
        }
        return r;
    }

    sealed record Prepared(Trainer Trainer, RunSetup.Compiled Setup, DatasetSplits? Splits, TrainerOptions Options, int Classes);

    /// <summary>
    /// Plugins, data, compile and the trainer, in a frame of their own: the JIT may keep hidden temporaries of a frame (the
    /// arguments of <c>new Trainer(...)</c>) alive until it returns, and these held the host copy of the weights through every
    /// step (ViT-B/16: 330 MiB of the measured peak) even with the variables cleared. Without a profile or epochs, the setup
    /// comes back without the compiled artifacts and the model's weights.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    static Prepared Prepare(BenchmarkSpec s, DeviceSpec device, PolicyResult r, ILogger log)
    {
        var catalog = PluginCatalog.Load(s.PluginFolders, log);
        DatasetSplits? splits = null;
        int classes = s.Classes;
        if (!s.Dataset.Equals("synthetic", StringComparison.OrdinalIgnoreCase))
        {
            if (!catalog.Datasets.TryGetValue(s.Dataset, out var ds))
                throw new UsageException($"dataset '{s.Dataset}' is not provided by any loaded plugin (available: synthetic, {string.Join(", ", catalog.Datasets.Keys.Order())})");
            splits = ds.Provider.Open(new DatasetRequest { DataDir = s.DataDir, Seed = s.Seed, Limit = s.Limit, Logger = log });
            classes = splits.Train.ClassNames.Count;
        }

        var setup = RunSetup.Build(catalog, new RunSetup.Request
        {
            Model = s.Model, Classes = classes, ImageSize = s.ImageSize, Seed = s.Seed, Weights = s.Weights,
            Policy = RunSetup.ResolvePrecision(catalog, s.Precision, device, "--precisions"), GradientAccumulation = false, LowPrecisionActivations = s.LowPrecisionActivations,
            Optimizer = new OrtFinetune.Training.Compiler.Optimizers.OptimizerOptions { Type = s.Optimizer, WeightDecay = s.WeightDecay, Momentum = s.Optimizer == "sgd" ? 0.9 : 0, MaxGradNorm = s.MaxGradNorm },
        }, device);
        var compiled = setup.Artifacts;
        r.Parameters = compiled.Parameters.Sum(p => p.ElementCount);
        var flops = FlopCounter.Count(compiled.TrainingModel, s.BatchSize);
        r.FlopsPerStep = flops.Total;
        r.TrainingNodes = compiled.TrainingModel.Graph.Nodes.Count;
        r.MatMulNodes = flops.Counted;
        r.MatMulNodes16Bit = flops.LowPrecision;
        r.MatMulType = flops.LowPrecisionFlops > flops.Total / 2 ? TypeName(setup.Policy.ComputeType) : "float32";
        if (flops.Skipped.Count > 0) log.LogWarning("FLOP count: {Count} nodes without static shapes not counted (first: {First})", flops.Skipped.Count, flops.Skipped[0]);
        log.LogInformation("{Policy}: {Model} compiled ({Params:N0} parameters, {Nodes} training nodes), {Gflop:F2} GFLOP per step in {Counted} MatMul/Gemm/Conv nodes ({Low} in 16-bit)",
            s.Precision, s.Model, r.Parameters, compiled.TrainingModel.Graph.Nodes.Count, flops.Total / 1e9, flops.Counted, flops.LowPrecision);

        MemNote(log, "compiled");
        var estimate = OrtFinetune.Training.Compiler.Scheduling.MemoryModel.Predict(compiled.TrainingModel, setup.Optimizer, s.BatchSize, device.RuntimeAllowanceBytes);
        r.PredictedPeakBytes = estimate.TotalBytes;
        r.PredictedActivationBytes = estimate.ActivationPeakBytes;
        r.PredictedSummary = estimate.Summary(device.IsCuda ? "device" : "host");
        log.LogInformation("{Policy}: {Summary}", s.Precision, r.PredictedSummary);
        r.MemorySettings = $"cpu arena {(s.CpuArena ? "on" : "off")}; {MemorySettings.Current}";
        log.LogInformation("{Policy}: sessions: {Settings}", s.Precision, r.MemorySettings);
        var options = new TrainerOptions { Device = device, IntraOpThreads = s.Threads, CpuMemArena = s.CpuArena, LossScaling = setup.Policy.LossScaling };
        var trainer = new Trainer(compiled.TrainingModel, compiled.EvalModel, setup.Optimizer, compiled.Parameters, compiled.Buffers, options);
        if (!s.Profile && s.Epochs == 0) setup = setup with { Model = setup.Model with { Forward = new OrtFinetune.Onnx.Model() }, Artifacts = null! };
        return new Prepared(trainer, setup, splits, options, classes);
    }

    /// <summary>
    /// The batch every timed step trains on, from a formula the PyTorch peer (bench/peers/torch_vit.py) computes
    /// the same way, so that both sides see the same data: pixel n of the flattened NCHW batch is sin(0.37 n)
    /// (computed in float64, stored as float32), label b is (31 b + 7) mod classes.
    /// </summary>
    public static (float[] Images, long[] Labels) SyntheticBatch(long[] dims, int classes)
    {
        var pixels = new float[dims.Aggregate(1L, (a, b) => a * b)];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)Math.Sin(0.37 * i);
        var labels = new long[dims[0]];
        for (int b = 0; b < labels.Length; b++) labels[b] = (31L * b + 7) % classes;
        return (pixels, labels);
    }

    /// <summary>Debug log: resident memory (Linux) and the GC's heap and committed bytes at a point of the run.</summary>
    static void MemNote(ILogger log, string where)
    {
        if (!log.IsEnabled(LogLevel.Debug)) return;
        string status = "";
        try
        {
            status = string.Join(", ", File.ReadLines("/proc/self/status").Where(l => l.StartsWith("VmRSS", StringComparison.Ordinal) || l.StartsWith("VmHWM", StringComparison.Ordinal))
                .Select(l => string.Join(' ', l.Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries)))) + "; ";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        var gi = GC.GetGCMemoryInfo();
        log.LogDebug("memory {Where}: {Status}GC heap {Heap} MiB, committed {Committed} MiB", where, status, gi.HeapSizeBytes >> 20, gi.TotalCommittedBytes >> 20);
    }

    /// <summary>Full epochs on the dataset with a fresh trainer (the timed steps trained on noise), validation after each, test at the end.</summary>
    static void RunEpochs(BenchmarkSpec s, RunSetup.Compiled setup, DatasetSplits splits, TrainerOptions options, PolicyResult r, ILogger log, CancellationToken ct)
    {
        var c = setup.Artifacts;
        var settings = new TrainSettings { BatchSize = s.BatchSize, Seed = s.Seed, Workers = s.Workers };
        var train = new LoaderBatchSource(splits.Train, setup.Model, true, settings);
        var val = new LoaderBatchSource(splits.Validation, setup.Model, false, settings);
        var test = new LoaderBatchSource(splits.Test, setup.Model, false, settings);
        long total = (long)train.BatchesPerEpoch * s.Epochs;
        var schedule = Schedules.Create("cosine", s.Lr, total, Math.Min(total / 10, 100));
        using var trainer = new Trainer(c.TrainingModel, c.EvalModel, setup.Optimizer, c.Parameters, c.Buffers, options);
        for (int epoch = 0; epoch < s.Epochs; epoch++)
        {
            foreach (var (xs, ys, n) in train.Epoch(epoch, 0, ct))
            {
                using var xv = OrtValue.CreateTensorValueFromMemory(xs, [n, setup.Model.Channels, setup.Model.ImageSize, setup.Model.ImageSize]);
                using var yv = OrtValue.CreateTensorValueFromMemory(ys, [n]);
                trainer.LazyResetGrad();
                var step = trainer.TrainStep([xv], yv);
                trainer.SetLearningRate((float)schedule.At(trainer.Step));
                var o = trainer.OptimizerStep();
                if (o.AllFinite) r.EpochLosses.Add(step.Loss);
            }
            var v = TrainRun.Evaluate(trainer, val, setup.Model, ct);
            r.ValAccuracy.Add(v.Top1);
            log.LogInformation("{Policy} epoch {Epoch}/{Epochs}: validation accuracy {Acc:P2}, loss {Loss:F4}", s.Precision, epoch + 1, s.Epochs, v.Top1, v.Loss);
        }
        var t = TrainRun.Evaluate(trainer, test, setup.Model, ct);
        r.TestAccuracy = t.Top1;
        r.TestLoss = t.Loss;
        r.SkippedSteps += trainer.Scaler?.SkippedSteps ?? 0;
    }

    public static string TypeName(OrtFinetune.Onnx.DataType t) => t switch
    {
        OrtFinetune.Onnx.DataType.Float16 => "float16", OrtFinetune.Onnx.DataType.BFloat16 => "bfloat16",
        OrtFinetune.Onnx.DataType.Double => "float64", _ => "float32",
    };

    /// <summary>Linear interpolation between closest ranks (numpy's default).</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double q)
    {
        if (sorted.Count == 0) return double.NaN;
        double pos = q * (sorted.Count - 1);
        int lo = (int)Math.Floor(pos), hi = Math.Min(lo + 1, sorted.Count - 1);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }
}
