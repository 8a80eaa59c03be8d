using OrtFinetune.Abstractions;
using OrtFinetune.Plugins.Models.Weights;

namespace OrtFinetune.Plugins.Models;

/// <summary>
/// torchvision VisionTransformer architectures built in ONNX, optionally with pretrained weights in torchvision,
/// Hugging Face or timm naming (<see cref="CheckpointImport"/>); "auto" takes the architecture from the weights.
/// </summary>
public sealed class VitModelProvider : IModelProvider
{
    public static readonly string[] HeadNames = [VitNames.HeadWeight, VitNames.HeadBias];
    public const string Auto = "auto";
    static readonly float[] ImageNetMean = [0.485f, 0.456f, 0.406f], ImageNetStd = [0.229f, 0.224f, 0.225f], Half = [0.5f, 0.5f, 0.5f];

    public string Name => "vit";
    public IReadOnlyList<string> Architectures { get; } = [.. VitPresets.All.Select(p => p.Name), Auto];
    public string Description =>
        "torchvision VisionTransformer (names and init as torchvision; weights: safetensors file, folder or sharded index in torchvision, Hugging Face or timm naming): "
        + string.Join("; ", VitPresets.All.Select(p => $"{p.Name} = {p.Description}"))
        + $"; {Auto} = the architecture of the weights (their shapes and config.json)";

    /// <summary>A preset's image size and patch size; null for <see cref="Auto"/> (the weights decide) and unknown names.</summary>
    public ModelInputSize? InputSize(string architecture) =>
        VitPresets.Find(architecture) is { } p ? new ModelInputSize(p.Config.ImageSize, p.Config.PatchSize) : null;

    /// <summary>The settings a request resolves to (preset, with the request's classes, channels and image size).</summary>
    public static (VitPreset Preset, VitConfig Config) Resolve(ModelRequest request)
    {
        var preset = VitPresets.Find(request.Architecture)
            ?? throw new ModelException($"unknown ViT architecture '{request.Architecture}' (known: {string.Join(", ", VitPresets.All.Select(p => p.Name))}, {Auto})");
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
        bool auto = string.Equals(request.Architecture, Auto, StringComparison.OrdinalIgnoreCase);
        if (auto && request.WeightsPath == null) throw new ModelException($"--model {Auto} takes the architecture from the weights: set --weights");
        if (request.NumClasses <= 0) throw new ModelException($"number of classes must be positive (got {request.NumClasses})");
        Checkpoint? ckpt = null;
        NameMap? map = null;
        string namingSource = "";
        CheckpointArchitecture? arch = null;
        var notes = new List<string>();
        string name;
        VitConfig config;
        float[] mean, std;
        if (request.WeightsPath != null)
        {
            ckpt = Checkpoint.Open(request.WeightsPath);
            (map, namingSource) = CheckpointImport.ResolveNaming(ckpt, request.WeightsFormat);
            arch = CheckpointImport.Architecture(ckpt, map);
        }
        if (auto)
        {
            config = arch!.ToConfig(request.NumClasses, request.ImageSize, request.Channels, notes);
            if (arch.Channels != request.Channels)
                throw new ModelException($"{ckpt!.Path}: the weights take {arch.Channels}-channel images but the dataset has {request.Channels}");
            try { config.Validate(); }
            catch (ModelException e) { throw new ModelException($"{ckpt!.Path}: {e.Message}", e); }
            name = $"{Auto} ({NameMap.Name(arch.Naming)})";
            (mean, std) = Normalization(ckpt!, arch.Naming, request.Channels);
        }
        else
        {
            var (preset, c) = Resolve(request);
            config = c;
            name = preset.Name;
            (mean, std) = (PerChannel(preset.Mean, config.Channels), PerChannel(preset.Std, config.Channels));
            if (arch != null)
            {
                var mismatch = new List<string>();
                if (arch.Hidden != c.Hidden) mismatch.Add($"hidden {arch.Hidden} vs {c.Hidden}");
                if (arch.Layers != c.Layers) mismatch.Add($"layers {arch.Layers} vs {c.Layers}");
                if (arch.MlpDim != c.MlpDim) mismatch.Add($"mlp {arch.MlpDim} vs {c.MlpDim}");
                if (arch.PatchSize != c.PatchSize) mismatch.Add($"patch {arch.PatchSize} vs {c.PatchSize}");
                if (arch.Heads is int h && h != c.Heads) mismatch.Add($"heads {h} vs {c.Heads}");
                if (arch.Channels != c.Channels) mismatch.Add($"channels {arch.Channels} vs {c.Channels}");
                if (mismatch.Count > 0)
                    throw new ModelException($"{ckpt!.Path}: the weights are a {arch} and do not fit {preset.Name} (weights vs model: {string.Join(", ", mismatch)}); use --model {Auto} or the matching model");
                config = config with { LayerNormEpsilon = arch.Epsilon };
            }
        }

        var model = VitBuilder.Build(config, request.Seed);
        string? reportText = null;
        if (ckpt != null)
        {
            var report = CheckpointImport.Load(model, config, ckpt, map!, namingSource);
            report.Notes.InsertRange(0, notes);
            report.Notes.Insert(0, $"checkpoint architecture: {arch}");
            notes.Insert(0, report.Summary);
            foreach (var r in report.Reshaped) notes.Add(r);
            reportText = report.ToString();
        }
        return new ModelDefinition
        {
            Forward = model,
            InputName = VitBuilder.InputName,
            ImageSize = config.ImageSize,
            Channels = config.Channels,
            Mean = mean,
            Std = std,
            Description = $"{name}: {config} ({config.ParameterCount:N0} parameters)" + (notes.Count > 0 ? "; " + string.Join("; ", notes) : ""),
            WeightsReport = reportText,
            LayerIds = LayerIds(config.Layers),
            NumLayers = config.Layers,
            HeadParameters = HeadNames,
        };
    }

    /// <summary>BEiT's get_layer_id_for_vit on our names: embeddings 0, block i -> i + 1, final norm and head -> layers + 1.</summary>
    public static IReadOnlyDictionary<string, int> LayerIds(int layers) => VitNames.All(layers).ToDictionary(n => n, n =>
        VitNames.SplitLayer(n) is (int i, _) ? i + 1
        : n is VitNames.ClassToken or VitNames.PatchWeight or VitNames.PatchBias or VitNames.PosEmbedding ? 0
        : layers + 1);

    /// <summary>Input normalization for "auto": preprocessor_config.json (HF) or config.json's pretrained_cfg (timm), else the library's usual.</summary>
    static (float[] Mean, float[] Std) Normalization(Checkpoint ckpt, WeightNaming naming, int channels)
    {
        var mean = Checkpoint.Floats(ckpt.Preprocessor, "image_mean") ?? Checkpoint.Floats(ckpt.Config, "pretrained_cfg.mean", "mean");
        var std = Checkpoint.Floats(ckpt.Preprocessor, "image_std") ?? Checkpoint.Floats(ckpt.Config, "pretrained_cfg.std", "std");
        var fallback = naming == WeightNaming.Torchvision ? (ImageNetMean, ImageNetStd) : (Half, Half);
        return (PerChannel(mean ?? fallback.Item1, channels), PerChannel(std ?? fallback.Item2, channels));
    }

    internal static float[] PerChannel(float[] v, int channels) =>
        channels == v.Length ? v.ToArray() : Enumerable.Repeat(v.Average(), channels).ToArray();
}
