using OrtFinetune.Abstractions;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.Training;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>
/// The model -> precision -> compile -> optimizer part of <see cref="TrainRun"/>, the same calls with
/// the same options, for the benchmark (which has no TrainSettings and may have no dataset plugin).
/// </summary>
public static class RunSetup
{
    public sealed record Compiled(ModelDefinition Model, IPrecisionPolicy Policy, TrainingArtifacts Artifacts, Model Optimizer);

    public static IPrecisionPolicy ResolvePrecision(PluginCatalog catalog, string name, DeviceSpec device)
    {
        var policies = catalog.Services<IPrecisionPolicy>().Select(x => x.Service).ToList();
        if (policies.Count == 0) throw new UsageException("no precision policies are loaded (the precision plugin is missing from the plugins folder)");
        try { return PrecisionNames.Resolve(policies, name, device.IsCuda, cudaBf16: device.IsCuda).WithOptions(new PrecisionOptions()); }
        catch (PrecisionException e) { throw new UsageException($"--precisions '{name}': {e.Message}"); }
    }

    public static Compiled Build(PluginCatalog catalog, BenchmarkSpec s, int classes, DeviceSpec device)
    {
        if (!catalog.Models.TryGetValue(s.Model, out var mp))
            throw new UsageException($"model '{s.Model}' is not provided by any loaded plugin (available: {string.Join(", ", catalog.Models.Keys.Order())})");
        var policy = ResolvePrecision(catalog, s.Precision, device);
        var kernels = KernelProbe.For(device);
        var model = mp.Provider.Create(new ModelRequest { Architecture = s.Model, NumClasses = classes, ImageSize = s.ImageSize, Channels = 3, Seed = s.Seed });
        var compiled = TrainingCompiler.Compile(model.Forward, new CompileOptions
        {
            GradientAccumulation = true, Loss = new LossOptions(), Precision = policy, Kernels = kernels,
        });
        var optimizer = OptimizerBuilder.Build(compiled.Parameters, new OptimizerOptions
        {
            Type = s.Optimizer, WeightDecay = s.WeightDecay, Momentum = s.Optimizer == "sgd" ? 0.9 : 0, MaxGradNorm = s.MaxGradNorm,
            Rounding = policy.Rounding,
        }, compiled.TrainingModel.OpsetOf(""), kernels);
        return new Compiled(model, policy, compiled, optimizer);
    }
}
