using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>torchvision VisionTransformer architectures built in ONNX, optionally with safetensors weights.</summary>
public sealed class VitModelProvider : IModelProvider
{
    public static readonly string[] HeadNames = ["heads.head.weight", "heads.head.bias"];

    public string Name => "vit";
    public IReadOnlyList<string> Architectures { get; } = VitPresets.All.Select(p => p.Name).ToArray();
    public string Description =>
        "torchvision VisionTransformer (names and init as torchvision; weights: safetensors state_dict): "
        + string.Join("; ", VitPresets.All.Select(p => $"{p.Name} = {p.Description}"));

    /// <summary>The settings a request resolves to (preset, with the request's classes, channels and image size).</summary>
    public static (VitPreset Preset, VitConfig Config) Resolve(ModelRequest request)
    {
        var preset = VitPresets.Find(request.Architecture)
            ?? throw new ModelException($"unknown ViT architecture '{request.Architecture}' (known: {string.Join(", ", VitPresets.All.Select(p => p.Name))})");
        var config = preset.Config with
        {
            NumClasses = request.NumClasses,
            Channels = request.Channels,
            ImageSize = request.ImageSize > 0 ? request.ImageSize : preset.Config.ImageSize,
        };
        try { config.Validate(); }
        catch (ModelException e) { throw new ModelException($"{preset.Name}: {e.Message}", e); }
        return (preset, config);
    }

    public ModelDefinition Create(ModelRequest request)
    {
        var (preset, config) = Resolve(request);
        var model = VitBuilder.Build(config, request.Seed);
        var notes = new List<string>();
        if (request.WeightsPath != null)
        {
            var report = WeightLoader.Load(model, request.WeightsPath, HeadNames);
            notes.Add($"loaded {report.Loaded} tensors from {request.WeightsPath}");
            notes.AddRange(report.Notes);
        }
        return new ModelDefinition
        {
            Forward = model,
            InputName = VitBuilder.InputName,
            ImageSize = config.ImageSize,
            Channels = config.Channels,
            Mean = PerChannel(preset.Mean, config.Channels),
            Std = PerChannel(preset.Std, config.Channels),
            Description = $"{preset.Name}: {config} ({config.ParameterCount:N0} parameters)"
                + (notes.Count > 0 ? "; " + string.Join("; ", notes) : ""),
        };
    }

    internal static float[] PerChannel(float[] v, int channels) =>
        channels == v.Length ? v.ToArray() : Enumerable.Repeat(v.Average(), channels).ToArray();
}
