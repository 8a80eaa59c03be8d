using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Distributed;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Compiler.Precision;
using OrtFinetune.Training.Compiler.Scheduling;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Training;

/// <summary>Batches of one split: images NCHW float32, labels int64.</summary>
public interface IBatchSource
{
    int BatchesPerEpoch { get; }
    IEnumerable<(float[] Images, long[] Labels, int Count)> Epoch(int epoch, int startBatch, CancellationToken ct);
    /// <summary>Seconds the consumer waited for data so far.</summary>
    double WaitSeconds { get; }
}

/// <summary>
/// The train, eval and export verbs: dataset and model from plugins, precision, compile, and a trainer
/// (<see cref="Open"/>, shared by all three); then a full training run with periodic evaluation and
/// checkpoints, test evaluation, export and summary (<see cref="Train"/>), or one checkpoint evaluated
/// (<see cref="Evaluate"/>) or exported (<see cref="Export"/>). Training stops at a step boundary when
/// cancelled (SIGINT/SIGTERM) after saving a checkpoint.
/// With a <paramref name="comm"/> of several ranks the run is data parallel: every rank trains on its shard, the
/// trainer averages gradients, the ranks agree at each step on the reported loss and on stopping, metrics are
/// summed over the ranks, and only rank 0 writes the run folder (checkpoints, metrics, export, summary).
/// </summary>
public sealed class TrainRun(TrainSettings s, PluginCatalog catalog, ILogger log, Func<IImageDataset, ModelDefinition, bool, TrainSettings, IBatchSource> batches,
    Communicator? comm = null)
{
    int World => comm?.Size ?? 1;
    bool Root => comm == null || comm.IsRoot;

    /// <summary>The sums over the ranks of these values (the values themselves in one process); in place.</summary>
    double[] SumOverRanks(params double[] values)
    {
        if (World > 1) comm!.AllReduceSum(values);
        return values;
    }

    /// <summary>What every verb starts from: the data, the model and a trainer holding its weights.</summary>
    sealed record Session(DeviceSpec Device, IPrecisionPolicy Policy, DatasetSplits Splits, ModelDefinition Model, Trainer Trainer, long ParameterCount, string PrecisionReport) : IDisposable
    {
        public void Dispose() => Trainer.Dispose();
    }

    Session Open()
    {
        var session = Prepare();
        // The trainer holds its own copy of the weights: the host copies go (no doubled weight buffers), from this frame,
        // since the JIT may keep hidden temporaries of Prepare's frame (the arguments of new Trainer(...)) alive until it
        // returns (they held ViT-B/16's 330 MiB of weights in the benchmark's equivalent).
        HostMemory.Release();
        return session;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    Session Prepare()
    {
        var device = DeviceSpec.Parse(s.Device);
        DeviceSpec.UseProcessThreadPool(s.Threads);
        if (!catalog.Datasets.TryGetValue(s.Dataset, out var ds))
            throw new UsageException($"dataset '{s.Dataset}' is not provided by any loaded plugin (available: {string.Join(", ", catalog.Datasets.Keys.Order())})");
        var policy = RunSetup.ResolvePrecision(catalog, s.Precision, device, "Train:Precision (--precision)", new PrecisionOptions
        {
            LossScaling = s.LossScaling,
            Scaler = new LossScalerSettings { InitScale = s.LossScaleInit },
            Rounding = s.Rounding == "kahan" ? UpdateRounding.Kahan : UpdateRounding.Nearest,
        });

        log.LogInformation("opening dataset {Dataset} ({Plugin})", s.Dataset, ds.Plugin);
        DatasetSplits splits;
        try
        {
            splits = ds.Provider.Open(new DatasetRequest
            {
                DataDir = s.DataDir, Seed = s.Seed, Limit = s.Limit, Logger = log,
                OnBadSample = s.BadSamples == "skip" ? BadSamplePolicy.Skip : BadSamplePolicy.Stop,
            });
        }
        catch (Exception e) when (e is not (DatasetException or OperationCanceledException))
        {
            // A plugin bug, not bad data: report it by plugin name, without a trace.
            throw new DatasetException($"plugin '{ds.Plugin}' failed to open dataset '{s.Dataset}': {e.GetType().Name}: {e.Message}", e);
        }
        int classes = splits.Train.ClassNames.Count;
        log.LogInformation("dataset: {Train} train, {Val} validation, {Test} test images, {Classes} classes", splits.Train.Count, splits.Validation.Count, splits.Test.Count, classes);
        var defaults = RunDefaults.Resolve(s, splits, catalog.Models.TryGetValue(s.Model, out var mp) ? mp.Provider.InputSize(s.Model) : null, World);
        s = defaults.Settings;   // from here on the run, settings.json and summary.json see the resolved values
        if (defaults.Summary != null) log.LogInformation("{Defaults}", defaults.Summary);
        if (splits.Train.Count < s.BatchSize) throw new UsageException($"the training split has {splits.Train.Count} images, fewer than one batch of {s.BatchSize}");

        var setup = RunSetup.Build(catalog, new RunSetup.Request
        {
            Model = s.Model, Classes = classes, ImageSize = s.ImageSize, Seed = s.Seed, Weights = s.Weights, WeightsFormat = s.WeightsFormat, ModelFile = s.ModelFile,
            Trainable = s.Trainable, Freeze = s.Freeze, LabelSmoothing = s.LabelSmoothing, Policy = policy,
            LayerDecay = s.LayerDecay, HeadWarmup = s.HeadWarmupEpochs > 0, GradientAccumulation = s.GradientAccumulation > 1,
            LowPrecisionActivations = s.LowPrecisionActivations,
            Optimizer = new OptimizerOptions { Type = s.Optimizer, WeightDecay = s.WeightDecay, Momentum = s.Optimizer == "sgd" ? s.Momentum : 0, MaxGradNorm = s.MaxGradNorm },
        }, device);
        var compiled = setup.Artifacts;
        log.LogInformation("model {Model}: {Description}", s.Model, setup.Model.Description);
        foreach (var note in setup.Notes) log.LogInformation("{Note}", note);
        var report = DtypeReport.Of(compiled.TrainingModel);
        log.LogInformation("precision {Precision}: parameters in {Storage}, compute in {Compute}{Scaler}", policy.Name, policy.StorageType.OnnxName(), policy.ComputeType.OnnxName(),
            policy.LossScaling != null ? $", dynamic loss scaling from {policy.LossScaling.InitScale}" : "");
        log.LogDebug("dtypes of the training graph per op type:\n{Report}", report);
        long paramCount = compiled.Parameters.Sum(p => p.ElementCount);
        log.LogInformation("compiled in {Ms:F0} ms: {Count:N0} trainable parameters in {Tensors} tensors, {Nodes} training nodes",
            compiled.CompileTime.TotalMilliseconds, paramCount, compiled.Parameters.Count, compiled.TrainingModel.Graph.Nodes.Count);

        var estimate = MemoryModel.Predict(compiled.TrainingModel, setup.Optimizer, s.BatchSize, device.RuntimeAllowanceBytes);
        log.LogInformation("{Estimate}", estimate.Summary(device.IsCuda ? "device" : "host"));
        var trainer = new Trainer(compiled.TrainingModel, compiled.EvalModel, setup.Optimizer, compiled.Parameters, compiled.Buffers,
            new TrainerOptions { Device = device, IntraOpThreads = s.Threads, CpuMemArena = s.CpuArena, LossScaling = policy.LossScaling, Communicator = comm });
        return new Session(device, policy, splits, setup.Model with { Forward = new Model() }, trainer, paramCount,
            $"policy {policy.Name} on {device}\n\n{report}\n\nkernel probes:\n{setup.Kernels.Describe()}\n");
    }

    /// <summary>The eval and export verbs start from a checkpoint.</summary>
    Session OpenCheckpoint()
    {
        if (s.Resume == null) throw new UsageException("this command needs a checkpoint: --resume <file> or --run <run folder>");
        var x = Open();
        try { x.Trainer.LoadCheckpoint(s.Resume); }
        catch { x.Dispose(); throw; }
        log.LogInformation("loaded {Checkpoint} (step {Step})", s.Resume, x.Trainer.Step);
        HostMemory.Release();   // the file's tensors, read to the host and copied into the trainer's
        return x;
    }

    /// <summary>
    /// The export verb: the checkpoint's weights as an inference model (and an fp16 copy when asked), or with
    /// --format safetensors as a PyTorch library's state dict (--naming torchvision|hf|timm).
    /// </summary>
    public int Export(string to)
    {
        using var x = OpenCheckpoint();
        if (s.ExportFormat == "safetensors")
        {
            Console.WriteLine(WeightExportStep.Export(catalog, x.Trainer, to, s.ExportFormat, s.ExportNaming));
            return ExitCodes.Ok;
        }
        x.Trainer.ExportModelForInferencing(to);
        if (s.ExportFp16) HalfExport.ConvertFile(to, Path.ChangeExtension(to, ".fp16.onnx"));
        Console.WriteLine($"exported {to}{(s.ExportFp16 ? " and " + Path.ChangeExtension(to, ".fp16.onnx") : "")}");
        return ExitCodes.Ok;
    }

    /// <summary>The eval verb: the checkpoint on the test and validation splits (eval.json in --output when given).</summary>
    public int Evaluate(CancellationToken ct)
    {
        using var x = OpenCheckpoint();
        var te = Evaluate(x.Trainer, batches(x.Splits.Test, x.Model, false, s), x.Model, ct);
        var ve = Evaluate(x.Trainer, batches(x.Splits.Validation, x.Model, false, s), x.Model, ct);
        Console.WriteLine($"test accuracy {te.Top1:P2} (top-5 {te.Top5:P2}), test loss {te.Loss:F4}; validation accuracy {ve.Top1:P2}, loss {ve.Loss:F4}");
        var result = new JsonObject
        {
            ["checkpoint"] = Path.GetFullPath(s.Resume!), ["step"] = x.Trainer.Step, ["precision"] = x.Policy.Name,
            ["test_accuracy"] = Finite(te.Top1), ["test_top5"] = Finite(te.Top5), ["test_loss"] = Finite(te.Loss),
            ["val_accuracy"] = Finite(ve.Top1), ["val_top5"] = Finite(ve.Top5), ["val_loss"] = Finite(ve.Loss),
        };
        if (s.Output != null) { Directory.CreateDirectory(s.Output); File.WriteAllText(Path.Combine(s.Output, "eval.json"), result.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true })); }
        return ExitCodes.Ok;
    }

    /// <summary>The train verb.</summary>
    public int Train(CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        using var x = Open();
        var (trainer, model) = (x.Trainer, x.Model);
        var runDir = s.Output ?? (s.Resume != null ? Path.GetDirectoryName(Path.GetDirectoryName(Path.GetFullPath(s.Resume)))! : Path.Combine("runs", DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)));
        using var run = Root ? new RunFolder(runDir, append: s.Resume != null) : null;
        if (run != null)
        {
            run.WriteJson("settings.json", s);
            File.WriteAllText(Path.Combine(run.Path, "precision_report.txt"), x.PrecisionReport);
            if (model.WeightsReport != null)
            {
                File.WriteAllText(Path.Combine(run.Path, "weights_report.txt"), model.WeightsReport);
                log.LogDebug("weights:\n{Report}", model.WeightsReport);
            }
        }
        if (World > 1)
            log.LogInformation("data parallel over {Ranks} ranks ({Transport}): batch {Batch} per rank, {Global} per step", World, comm!.Description,
                s.BatchSize, s.BatchSize * World * s.GradientAccumulation);

        var train = batches(x.Splits.Train, model, true, s);
        var val = batches(x.Splits.Validation, model, false, s);
        var test = batches(x.Splits.Test, model, false, s);
        int stepsPerEpoch = train.BatchesPerEpoch / s.GradientAccumulation;
        long totalSteps = (long)stepsPerEpoch * s.Epochs;
        // The warm-up was resolved with the other automatic settings in Open (RunDefaults), over these same steps.
        var schedule = Schedules.Create(s.Schedule, s.Lr, totalSteps, Math.Min(s.WarmupSteps!.Value, totalSteps));

        if (s.HeadWarmupEpochs >= s.Epochs)
            log.LogWarning("--head-warmup-epochs {Warmup} >= --epochs {Epochs}: this run trains only the head", s.HeadWarmupEpochs, s.Epochs);
        int startEpoch = 0, startBatch = 0;
        if (s.Resume != null)
        {
            var extra = trainer.LoadCheckpoint(s.Resume);
            if (extra.GetValueOrDefault("world_size", "1") != World.ToString(CultureInfo.InvariantCulture))
                throw new CheckpointException($"{s.Resume}: the checkpoint was written by a run on {extra.GetValueOrDefault("world_size", "1")} rank(s) and this run has {World}: "
                    + "the data shards and the global batch would change, so its data position cannot be continued. Resume with the same --devices and --num-nodes.");
            startEpoch = int.Parse(extra.GetValueOrDefault("epoch", "0"), CultureInfo.InvariantCulture);
            startBatch = int.Parse(extra.GetValueOrDefault("batch", "0"), CultureInfo.InvariantCulture);
            if (extra.GetValueOrDefault("seed") is { } seed && seed != s.Seed.ToString(CultureInfo.InvariantCulture))
                log.LogWarning("the checkpoint was trained with seed {Old}; continuing with seed {New} changes the data order", seed, s.Seed);
            log.LogInformation("resumed from {Checkpoint}: step {Step}, epoch {Epoch}, batch {Batch}", s.Resume, trainer.Step, startEpoch + 1, startBatch);
            HostMemory.Release();   // the file's tensors, read to the host and copied into the trainer's
        }

        Dictionary<string, string> State(int epoch, int batch) => new()
        {
            ["epoch"] = epoch.ToString(CultureInfo.InvariantCulture), ["batch"] = batch.ToString(CultureInfo.InvariantCulture),
            ["seed"] = s.Seed.ToString(CultureInfo.InvariantCulture), ["schedule"] = schedule.Describe(), ["precision"] = x.Policy.Name,
            ["world_size"] = World.ToString(CultureInfo.InvariantCulture),
        };
        string checkpoint = run?.LastCheckpoint ?? Path.Combine(Path.GetFullPath(runDir), "checkpoints", "last.ckpt");
        string LastGood() => File.Exists(checkpoint) ? checkpoint : "none";
        void Save(int epoch, int batch) { if (run != null) trainer.SaveCheckpoint(checkpoint, State(epoch, batch)); }
        // With several ranks a stop request (signal) is honoured only when the ranks agree on it, at a step boundary:
        // the loader is not cancelled under a rank's feet, or the other ranks would wait for it in a collective.
        var dataCt = World > 1 ? CancellationToken.None : ct;
        bool StopAgreed() => SumOverRanks(ct.IsCancellationRequested ? 1 : 0)[0] > 0;

        var trainClock = Stopwatch.StartNew();
        long samples = 0;
        float lastLoss = float.NaN;
        var progress = new Progress(totalSteps, log, Root);
        bool interrupted = false;
        int epochAt = startEpoch, batchAt = startBatch;
        try
        {
            for (int epoch = startEpoch; epoch < s.Epochs && !interrupted; epoch++)
            {
                int micro = 0, batchIndex = epoch == startEpoch ? startBatch : 0;
                double lossSum = 0; long correct = 0, seen = 0;
                trainer.LazyResetGrad();
                trainer.UpdateBody = epoch >= s.HeadWarmupEpochs;   // head-only warm-up: the epoch decides, so a resumed run is in the right phase
                foreach (var (xs, ys, n) in train.Epoch(epoch, batchIndex, dataCt))
                {
                    using var xv = OrtValue.CreateTensorValueFromMemory(xs, [n, model.Channels, model.ImageSize, model.ImageSize]);
                    using var yv = OrtValue.CreateTensorValueFromMemory(ys, [n]);
                    var r = trainer.TrainStep([xv], yv);
                    batchIndex++; micro++;
                    samples += n; seen += n; lossSum += r.Loss * n; correct += Math.Max(0, r.Top1Correct);
                    if (!float.IsFinite(r.Loss) && trainer.Scaler == null)
                        throw new NumericalException($"the loss became {r.Loss} at step {trainer.Step + 1} (epoch {epoch + 1}); the last good checkpoint is {LastGood()}. Lower the learning rate or use gradient clipping.");
                    if (micro < s.GradientAccumulation) continue;
                    micro = 0;
                    trainer.SetLearningRate((float)schedule.At(trainer.Step));
                    var o = trainer.OptimizerStep();   // with a loss scaler: a skipped step backs the scale off, a collapsing scale throws
                    trainer.LazyResetGrad();
                    // One small collective per step: the loss averaged over the ranks, and whether any rank was asked to stop.
                    var agreed = SumOverRanks(r.Loss, ct.IsCancellationRequested ? 1 : 0);
                    float loss = (float)(agreed[0] / World);
                    bool stop = agreed[1] > 0;
                    if (!o.AllFinite && trainer.Scaler != null)
                    {
                        log.LogDebug("step skipped: non-finite gradients at loss scale {Scale}", o.LossScale);
                        if (stop) { interrupted = true; break; }
                        continue;
                    }
                    if (!o.AllFinite)
                        throw new NumericalException($"a gradient became infinite or NaN at step {trainer.Step + 1} (epoch {epoch + 1}); the update was skipped and training stopped. The last good checkpoint is {LastGood()}.");
                    lastLoss = loss;
                    epochAt = epoch; batchAt = batchIndex;
                    progress.Report(trainer.Step, epoch + 1, s.Epochs, loss, samples * World / trainClock.Elapsed.TotalSeconds);
                    if (trainer.Step % s.LogEvery == 0)
                        run?.Metric(new JsonObject
                        {
                            ["step"] = trainer.Step, ["epoch"] = epoch + 1, ["loss"] = Finite(loss), ["lr"] = trainer.LearningRate, ["grad_norm"] = Finite(o.GradNorm),
                            ["train_accuracy"] = seen > 0 ? (double)correct / seen : null, ["samples_per_second"] = samples * World / trainClock.Elapsed.TotalSeconds,
                            ["elapsed_seconds"] = total.Elapsed.TotalSeconds, ["loss_scale"] = trainer.Scaler != null ? o.LossScale : null,
                        });
                    if (s.CheckpointEvery > 0 && trainer.Step % s.CheckpointEvery == 0) Save(epoch, batchIndex);
                    if (stop) { interrupted = true; break; }
                }
                if (interrupted || StopAgreed()) { interrupted = true; break; }
                progress.Done();
                var v = EvaluateOverRanks(trainer, val, model, dataCt);
                var epochSums = SumOverRanks(lossSum, correct, seen);
                (lossSum, correct, seen) = (epochSums[0], (long)epochSums[1], (long)epochSums[2]);
                log.LogInformation("epoch {Epoch}/{Epochs}: train loss {TrainLoss:F4}, train accuracy {TrainAcc:P2}; validation loss {Loss:F4}, accuracy {Acc:P2} (top-5 {Top5:P2})",
                    epoch + 1, s.Epochs, seen > 0 ? lossSum / seen : double.NaN, seen > 0 ? (double)correct / seen : double.NaN, v.Loss, v.Top1, v.Top5);
                run?.Metric(new JsonObject { ["epoch"] = epoch + 1, ["step"] = trainer.Step, ["val_loss"] = Finite(v.Loss), ["val_accuracy"] = Finite(v.Top1), ["val_top5"] = Finite(v.Top5) });
                epochAt = epoch + 1; batchAt = 0;
                Save(epoch + 1, 0);
            }
        }
        catch (OperationCanceledException) { interrupted = true; }

        if (interrupted)
        {
            Save(epochAt, batchAt);
            comm?.Barrier();   // every rank stops only once the one checkpoint is written
            log.LogWarning("interrupted at step {Step}: checkpoint saved to {Checkpoint}; resume with --resume {Checkpoint}", trainer.Step, checkpoint, checkpoint);
            return ExitCodes.Interrupted;
        }
        double trainSeconds = trainClock.Elapsed.TotalSeconds;
        if (World > 1) CheckRanksAgree(trainer);
        var t = EvaluateOverRanks(trainer, test, model, CancellationToken.None);
        if (run == null) return ExitCodes.Ok;
        trainer.ExportModelForInferencing(run.ExportedModel);
        if (s.ExportFp16) HalfExport.ConvertFile(run.ExportedModel, Path.ChangeExtension(run.ExportedModel, ".fp16.onnx"));
        var summary = new JsonObject
        {
            ["model"] = s.Model, ["dataset"] = s.Dataset, ["precision"] = x.Policy.Name, ["device"] = x.Device.ToString(),
            ["epochs"] = s.Epochs, ["batch_size"] = s.BatchSize, ["world_size"] = World, ["global_batch_size"] = s.BatchSize * World * s.GradientAccumulation,
            ["steps"] = trainer.Step, ["parameters"] = x.ParameterCount,
            ["image_size"] = model.ImageSize, ["augment"] = s.Augment, ["lr"] = s.Lr, ["warmup_steps"] = s.WarmupSteps,
            ["train_seconds"] = Math.Round(trainSeconds, 2), ["samples_per_second"] = Math.Round(samples * World / trainSeconds, 1),
            ["peak_memory_mb"] = Process.GetCurrentProcess().PeakWorkingSet64 / (1 << 20),
            ["allreduce_seconds"] = World > 1 ? Math.Round(trainer.AllReduceTime.TotalSeconds, 3) : null,
            ["allreduce_bytes_per_step"] = World > 1 ? trainer.AllReduceBytesPerStep : null,
            ["persistent_state_mb"] = trainer.PersistentBytes / (1 << 20),
            ["test_accuracy"] = Finite(Math.Round(t.Top1, 5)), ["test_top5"] = Finite(Math.Round(t.Top5, 5)), ["test_loss"] = Finite(Math.Round(t.Loss, 5)),
            ["final_loss"] = Finite(lastLoss), ["skipped_steps"] = trainer.Scaler?.SkippedSteps ?? 0, ["loss_scale"] = trainer.Scaler?.Scale, ["loader_wait_seconds"] = Math.Round(train.WaitSeconds, 2),
            ["checkpoint"] = run.LastCheckpoint, ["exported_model"] = run.ExportedModel,
        };
        var curves = run.Finish(summary);   // summary.json; the test metrics to every logger; curves.png
        Console.WriteLine();
        Console.WriteLine($"test accuracy {t.Top1:P2} (top-5 {t.Top5:P2}), test loss {t.Loss:F4}");
        Console.WriteLine($"throughput {samples * World / trainSeconds:F1} images/s over {trainSeconds:F1} s, peak memory {summary["peak_memory_mb"]} MB{(World > 1 ? " (rank 0)" : "")}");
        Console.WriteLine($"run folder: {run.Path}");
        if (curves != null) Console.WriteLine($"curves: {curves}");
        return ExitCodes.Ok;
    }

    /// <summary>JSON has no NaN/Infinity: a non-finite metric (diverged loss, empty split) is written as null.</summary>
    static double? Finite(double v) => double.IsFinite(v) ? v : null;

    /// <summary>
    /// Every rank must hold the same weights after the same updates; a difference (a non-deterministic kernel, a
    /// rank that skipped a step alone) is an error, not a silent drift.
    /// </summary>
    void CheckRanksAgree(Trainer trainer)
    {
        long digest = unchecked((long)trainer.StateDigest());
        long lo = comm!.AllReduceMin(digest), hi = comm.AllReduceMax(digest);
        if (lo != hi) throw new TrainingException($"the ranks' weights differ after {trainer.Step} steps (state digests from {lo:x16} to {hi:x16}); data-parallel replicas must stay identical");
        log.LogInformation("weights identical on all {Ranks} ranks (state digest {Digest:x16})", World, digest);
    }

    /// <summary>Mean loss, top-1 and top-5 accuracy over one pass of <paramref name="source"/> (every rank's shard, summed).</summary>
    (double Loss, double Top1, double Top5) EvaluateOverRanks(Trainer trainer, IBatchSource source, ModelDefinition model, CancellationToken ct)
    {
        var (loss, top1, top5, n) = EvaluateSums(trainer, source, model, ct);
        var sums = SumOverRanks(loss, top1, top5, n);
        return sums[3] == 0 ? (double.NaN, double.NaN, double.NaN) : (sums[0] / sums[3], sums[1] / sums[3], sums[2] / sums[3]);
    }

    /// <summary>Mean loss, top-1 and top-5 accuracy over one pass of <paramref name="source"/>.</summary>
    internal static (double Loss, double Top1, double Top5) Evaluate(Trainer trainer, IBatchSource source, ModelDefinition model, CancellationToken ct)
    {
        var (loss, top1, top5, n) = EvaluateSums(trainer, source, model, ct);
        return n == 0 ? (double.NaN, double.NaN, double.NaN) : (loss / n, top1 / n, top5 / n);
    }

    static (double Loss, double Top1, double Top5, double Count) EvaluateSums(Trainer trainer, IBatchSource source, ModelDefinition model, CancellationToken ct)
    {
        double loss = 0; long top1 = 0, top5 = 0, n = 0;
        foreach (var (x, y, count) in source.Epoch(0, 0, ct))
        {
            using var xv = OrtValue.CreateTensorValueFromMemory(x, [count, model.Channels, model.ImageSize, model.ImageSize]);
            using var yv = OrtValue.CreateTensorValueFromMemory(y, [count]);
            var r = trainer.EvalStep([xv], yv);
            loss += r.Loss * count; top1 += r.Top1Correct; top5 += r.Top5Correct; n += count;
        }
        return (loss, top1, top5, n);
    }

    /// <summary>Progress on stderr: a redrawn line on a terminal, else periodic log lines.</summary>
    sealed class Progress(long total, ILogger log, bool show)
    {
        readonly Stopwatch _clock = Stopwatch.StartNew();
        readonly bool _tty = !Console.IsErrorRedirected;
        DateTime _last = DateTime.MinValue;

        public void Report(long step, int epoch, int epochs, float loss, double rate)
        {
            if (!show || (DateTime.UtcNow - _last).TotalSeconds < (_tty ? 0.25 : 15) && step < total) return;
            _last = DateTime.UtcNow;
            double frac = Math.Min(1.0, (double)step / Math.Max(1, total));
            var eta = frac > 0 ? TimeSpan.FromSeconds(_clock.Elapsed.TotalSeconds * (1 - frac) / frac) : TimeSpan.Zero;
            var bar = new string('#', (int)(frac * 30)).PadRight(30, '.');
            var text = $"[{bar}] epoch {epoch}/{epochs} step {step}/{total} loss {loss:F4} {rate:F1} img/s ETA {eta:hh\\:mm\\:ss}";
            if (_tty) Console.Error.Write("\r" + text);
            else log.LogInformation("{Progress}", text);
        }

        public void Done() { if (_tty && show) Console.Error.WriteLine(); }
    }
}

/// <summary>A user mistake in the command line or configuration (exit code 1).</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>Training diverged (NaN/Inf) and was stopped (exit code 4).</summary>
public sealed class NumericalException(string message) : Exception(message);
