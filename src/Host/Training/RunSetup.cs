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
    public sealed record Compiled(ModelDefinition Model, IPrecisionPolicy Policy, TrainingArtifacts Artifacts, Model Optimizer, KernelProbe Kernels);

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
            GradientAccumulation = true, Trainable = r.Trainable, Freeze = r.Freeze,
            Loss = new LossOptions { LabelSmoothing = r.LabelSmoothing },
            Precision = r.Policy, Kernels = kernels,
        });
        // Without loss scaling a non-finite gradient stops the run, so the optimizer need not guard each update.
        var optimizer = OptimizerBuilder.Build(compiled.Parameters,
            r.Optimizer with
            {
                Rounding = r.Policy.Rounding, SkipNonFiniteUpdates = r.Policy.LossScaling != null,
                BucketBytes = OptimizerBuilder.DefaultBucketBytesFor(device.IsCuda),
            },
            compiled.TrainingModel.OpsetOf(""), kernels);
        return new Compiled(model, r.Policy, compiled, optimizer, kernels);
    }
}
