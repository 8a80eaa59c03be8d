using OrtFinetune.Abstractions;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Compiler.Precision;

namespace OrtFinetune.Host.Training;

/// <summary>
/// The model -> precision -> compile -> optimizer setup shared by <see cref="TrainRun"/> and the
/// benchmark: one place that turns plugin names and settings into compiled training graphs.
/// </summary>
public static class RunSetup
{
    /// <param name="Notes">What the finetuning controls did (layer-wise decay, head-only warm-up), one line each, for the log.</param>
    public sealed record Compiled(ModelDefinition Model, IPrecisionPolicy Policy, TrainingArtifacts Artifacts, Model Optimizer, KernelProbe Kernels, IReadOnlyList<string> Notes);

    /// <summary>What to build: the model by plugin name, its head size, and how to train it.</summary>
    public sealed record Request
    {
        public required string Model { get; init; }
        public required int Classes { get; init; }
        public required IPrecisionPolicy Policy { get; init; }
        public required OptimizerOptions Optimizer { get; init; }
        public int ImageSize { get; init; }
        public int Seed { get; init; }
        public string? Weights { get; init; }
        /// <summary>Naming of the weights (auto, torchvision, hf, timm).</summary>
        public string? WeightsFormat { get; init; }
        public string? ModelFile { get; init; }
        public IReadOnlyList<string> Trainable { get; init; } = [];
        public IReadOnlyList<string> Freeze { get; init; } = [];
        public double LabelSmoothing { get; init; }
        /// <summary>Layer-wise learning-rate decay in (0, 1] (<see cref="OrtFinetune.Abstractions.LayerDecay"/>); null = off.</summary>
        public double? LayerDecay { get; init; }
        /// <summary>Compile the optimizer for a head-only warm-up (<see cref="OptimizerOptions.HeadParameters"/>); the caller sets <see cref="Trainer.UpdateBody"/>.</summary>
        public bool HeadWarmup { get; init; }
        /// <summary>
        /// Gradients accumulated in the graph over several TrainSteps, in persistent buffers (true, the default), or transient:
        /// the training model's gradients come out in the optimizer's buckets, exist from their first write to the optimizer
        /// step, and each TrainStep needs its OptimizerStep (Optimizers.GradientBuckets; less memory).
        /// </summary>
        public bool GradientAccumulation { get; init; } = true;
        /// <summary><see cref="CompileOptions.LowPrecisionActivations"/>: mixed policies keep 16-bit activations where the provider lacks 16-bit kernels.</summary>
        public bool LowPrecisionActivations { get; init; }
    }

    /// <param name="setting">How the user named the setting, for the error message (e.g. "--precision").</param>
    public static IPrecisionPolicy ResolvePrecision(PluginCatalog catalog, string name, DeviceSpec device, string setting, PrecisionOptions? options = null)
    {
        var policies = catalog.Services<IPrecisionPolicy>().Select(x => x.Service).ToList();
        if (policies.Count == 0) throw new UsageException("no precision policies are loaded (the precision plugin is missing from the plugins folder)");
        try { return PrecisionNames.Resolve(policies, name, device.IsCuda, cudaBf16: CudaCapability.HasBf16(device)).WithOptions(options ?? new PrecisionOptions()); }
        catch (PrecisionException e) { throw new UsageException($"{setting} '{name}': {e.Message}"); }
    }

    public static ModelDefinition CreateModel(PluginCatalog catalog, Request r)
    {
        if (!catalog.Models.TryGetValue(r.Model, out var mp))
            throw new UsageException($"model '{r.Model}' is not provided by any loaded plugin (available: {string.Join(", ", catalog.Models.Keys.Order())})");
        ModelDefinition model;
        try
        {
            model = mp.Provider.Create(new ModelRequest
            {
                Architecture = r.Model, NumClasses = r.Classes, ImageSize = r.ImageSize, Channels = 3,
                WeightsPath = r.Weights, WeightsFormat = r.WeightsFormat, ModelPath = r.ModelFile, Seed = r.Seed,
            });
        }
        catch (Exception e) when (e is not (ModelException or OnnxFormatException or OperationCanceledException))
        {
            throw new ModelException($"plugin '{mp.Plugin}' failed to create model '{r.Model}': {e.GetType().Name}: {e.Message}", e);
        }
        if (model.Mean.Length == 0 || model.Std.Length == 0 || model.Mean.Any(v => !float.IsFinite(v)) || model.Std.Any(v => !(v > 0) || float.IsInfinity(v)))
            throw new ModelException($"plugin '{mp.Plugin}': model '{r.Model}' has an invalid input normalization (mean [{string.Join(", ", model.Mean)}], std [{string.Join(", ", model.Std)}]; std values must be positive and finite)");
        return model;
    }

    public static Compiled Build(PluginCatalog catalog, Request r, DeviceSpec device)
    {
        var kernels = KernelProbe.For(device);
        var model = CreateModel(catalog, r);
        var compiled = TrainingCompiler.Compile(model.Forward, new CompileOptions
        {
            GradientAccumulation = r.GradientAccumulation, Trainable = r.Trainable, Freeze = r.Freeze,
            Loss = new LossOptions { LabelSmoothing = r.LabelSmoothing },
            Precision = r.Policy, Kernels = kernels, LowPrecisionActivations = r.LowPrecisionActivations,
        });
        var notes = new List<string>();
        var multipliers = LayerDecayMultipliers(model, r, compiled.Parameters, notes);
        var head = HeadParameters(model, r, compiled.Parameters, notes);
        // Without loss scaling a non-finite gradient stops the run, so the optimizer need not guard each update.
        var optimizer = OptimizerBuilder.Build(compiled.Parameters,
            r.Optimizer with
            {
                Rounding = r.Policy.Rounding, SkipNonFiniteUpdates = r.Policy.LossScaling != null,
                BucketBytes = OptimizerBuilder.DefaultBucketBytesFor(device.IsCuda),
                LrMultipliers = multipliers ?? r.Optimizer.LrMultipliers, HeadParameters = head ?? r.Optimizer.HeadParameters,
            },
            compiled.TrainingModel.OpsetOf(""), kernels);
        if (!r.GradientAccumulation) GradientBuckets.Apply(compiled.TrainingModel, OptimizerBucket.Read(optimizer));
        return new Compiled(model, r.Policy, compiled, optimizer, kernels, notes);
    }

    /// <summary>
    /// --layer-decay: each trainable parameter's learning-rate multiplier from the model's layer ids
    /// (<see cref="LayerDecay.Scales"/>); null without layer decay. A model without layer ids is a usage error.
    /// </summary>
    public static IReadOnlyDictionary<string, double>? LayerDecayMultipliers(ModelDefinition model, Request r, IReadOnlyList<Tensor> trainable, List<string> notes)
    {
        if (r.LayerDecay is not double decay) return null;
        var scales = LayerDecay.Scales(model, decay)
            ?? throw new UsageException($"Train:LayerDecay (--layer-decay) = '{decay}': model '{r.Model}' has no layer structure (layer ids) to decay over; use a ViT model or leave --layer-decay out");
        var missing = trainable.FirstOrDefault(p => !scales.ContainsKey(p.Name));
        if (missing != null) throw new ModelException($"model '{r.Model}' gives no layer id for parameter '{missing.Name}' (needed by --layer-decay)");
        var mine = trainable.ToDictionary(p => p.Name, p => scales[p.Name]);
        if (mine.Count > 0)
        {
            var ids = model.LayerIds!;
            var low = mine.MinBy(kv => kv.Value);
            var high = mine.MaxBy(kv => kv.Value);
            string Where(string name) => ids[name] == 0 ? "embeddings" : ids[name] == model.NumLayers + 1 ? "final norm and head" : $"block {ids[name] - 1}";
            notes.Add(FormattableString.Invariant($"layer-wise lr decay {decay}: multipliers {low.Value:G3} ({Where(low.Key)}) .. {high.Value:G3} ({Where(high.Key)}) over {model.NumLayers + 2} layer groups"));
        }
        return mine;
    }

    /// <summary>
    /// --head-warmup-epochs: the model's head parameters for the optimizer's head-only updates; null without a warm-up.
    /// A model that does not name its head, or a head left frozen by --freeze/--trainable, is a usage error.
    /// </summary>
    public static IReadOnlyList<string>? HeadParameters(ModelDefinition model, Request r, IReadOnlyList<Tensor> trainable, List<string> notes)
    {
        if (!r.HeadWarmup) return null;
        var head = model.HeadParameters
            ?? throw new UsageException($"Train:HeadWarmupEpochs (--head-warmup-epochs): model '{r.Model}' does not say which parameters are its head; use a model that does (e.g. a ViT) or leave --head-warmup-epochs out");
        var names = trainable.Select(p => p.Name).ToHashSet();
        var trainableHead = head.Where(names.Contains).ToList();
        if (trainableHead.Count == 0)
            throw new UsageException($"Train:HeadWarmupEpochs (--head-warmup-epochs): the head parameters ({string.Join(", ", head)}) are not trainable (--freeze/--trainable)");
        notes.Add(trainableHead.Count < names.Count
            ? $"head-only warm-up: {string.Join(", ", trainableHead)} alone ({trainableHead.Count} of {names.Count} trainable tensors), then all of them"
            : $"head-only warm-up: {string.Join(", ", trainableHead)} are the only trainable tensors, so the warm-up changes nothing");
        return trainableHead;
    }
}
