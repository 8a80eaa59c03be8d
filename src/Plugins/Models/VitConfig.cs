using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>How the patch embedding (torchvision's conv_proj) is computed.</summary>
public enum PatchEmbedding
{
    /// <summary>Reshape/Transpose the image into patch rows, then one Gemm with conv_proj.weight viewed as (hidden, C*p*p).</summary>
    MatMul,
    /// <summary>A Conv with kernel = stride = patch, exactly as torchvision.</summary>
    Conv,
}

/// <summary>The settings of a torchvision VisionTransformer (dropout 0, LayerNorm eps 1e-6, no representation layer).</summary>
public sealed record VitConfig
{
    public required int ImageSize { get; init; }
    public required int PatchSize { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int Hidden { get; init; }
    public required int MlpDim { get; init; }
    public int Channels { get; init; } = 3;
    public int NumClasses { get; init; } = 1000;
    public float LayerNormEpsilon { get; init; } = 1e-6f;
    public PatchEmbedding PatchEmbedding { get; init; } = PatchEmbedding.MatMul;

    public int GridSize => ImageSize / PatchSize;
    public int Patches => GridSize * GridSize;
    /// <summary>Tokens: patches plus the class token.</summary>
    public int SeqLength => Patches + 1;
    public int HeadDim => Hidden / Heads;

    /// <summary>Throws a <see cref="ModelException"/> naming the setting that is out of range.</summary>
    public void Validate()
    {
        void Positive(string name, int v) { if (v <= 0) throw new ModelException($"ViT setting {name} must be positive (got {v})"); }
        Positive("image size", ImageSize); Positive("patch size", PatchSize); Positive("layers", Layers);
        Positive("heads", Heads); Positive("hidden", Hidden); Positive("mlp dim", MlpDim);
        Positive("channels", Channels); Positive("classes", NumClasses);
        if (ImageSize % PatchSize != 0)
            throw new ModelException($"ViT image size {ImageSize} is not a multiple of the patch size {PatchSize}");
        if (Hidden % Heads != 0)
            throw new ModelException($"ViT hidden size {Hidden} is not divisible by the number of heads {Heads}");
    }

    /// <summary>Number of float parameters (torchvision's state_dict size).</summary>
    public long ParameterCount
    {
        get
        {
            long d = Hidden, m = MlpDim;
            long perLayer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (m * d + m) + (d * m + d);
            return d * Channels * PatchSize * PatchSize + d + d + (long)SeqLength * d + Layers * perLayer + 2 * d + (long)NumClasses * d + NumClasses;
        }
    }

    public override string ToString() =>
        $"ViT image {ImageSize}, patch {PatchSize}, {Layers} layers, {Heads} heads, hidden {Hidden}, mlp {MlpDim}, {Channels} channels, {NumClasses} classes";
}

/// <summary>A named ViT architecture: its settings and the input normalization it expects.</summary>
public sealed record VitPreset(string Name, VitConfig Config, float[] Mean, float[] Std, string Description);

public static class VitPresets
{
    static readonly float[] ImageNetMean = [0.485f, 0.456f, 0.406f], ImageNetStd = [0.229f, 0.224f, 0.225f];
    static readonly float[] Half = [0.5f, 0.5f, 0.5f];

    public static IReadOnlyList<VitPreset> All { get; } =
    [
        new("vit-tiny", new VitConfig { ImageSize = 32, PatchSize = 4, Layers = 4, Heads = 3, Hidden = 96, MlpDim = 384 }, Half, Half,
            "small CPU ViT: 32x32 images, patch 4, 4 layers, 3 heads, hidden 96, mlp 384"),
        new("vit-small", new VitConfig { ImageSize = 32, PatchSize = 4, Layers = 6, Heads = 3, Hidden = 192, MlpDim = 768 }, Half, Half,
            "CPU ViT: 32x32 images, patch 4, 6 layers, 3 heads, hidden 192, mlp 768"),
        new("vit-b16", new VitConfig { ImageSize = 224, PatchSize = 16, Layers = 12, Heads = 12, Hidden = 768, MlpDim = 3072 }, ImageNetMean, ImageNetStd,
            "torchvision vit_b_16: 224x224, patch 16, 12 layers, 12 heads, hidden 768, mlp 3072"),
        new("vit-b32", new VitConfig { ImageSize = 224, PatchSize = 32, Layers = 12, Heads = 12, Hidden = 768, MlpDim = 3072 }, ImageNetMean, ImageNetStd,
            "torchvision vit_b_32: 224x224, patch 32, 12 layers, 12 heads, hidden 768, mlp 3072"),
        new("vit-l16", new VitConfig { ImageSize = 224, PatchSize = 16, Layers = 24, Heads = 16, Hidden = 1024, MlpDim = 4096 }, ImageNetMean, ImageNetStd,
            "torchvision vit_l_16: 224x224, patch 16, 24 layers, 16 heads, hidden 1024, mlp 4096"),
        new("vit-l32", new VitConfig { ImageSize = 224, PatchSize = 32, Layers = 24, Heads = 16, Hidden = 1024, MlpDim = 4096 }, ImageNetMean, ImageNetStd,
            "torchvision vit_l_32: 224x224, patch 32, 24 layers, 16 heads, hidden 1024, mlp 4096"),
        new("vit-h14", new VitConfig { ImageSize = 224, PatchSize = 14, Layers = 32, Heads = 16, Hidden = 1280, MlpDim = 5120 }, ImageNetMean, ImageNetStd,
            "torchvision vit_h_14: 224x224 (its SWAG weights use 518: set the image size), patch 14, 32 layers, 16 heads, hidden 1280, mlp 5120"),
    ];

    public static VitPreset? Find(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase));
}
