using OrtFinetune.Onnx;

namespace OrtFinetune.Abstractions;

public sealed record ModelRequest
{
    /// <summary>Architecture name as listed by the provider (e.g. "vit-small", "vit-b16", "vit-l16", "onnx").</summary>
    public required string Architecture { get; init; }
    public required int NumClasses { get; init; }
    /// <summary>Input image side in pixels (square), or 0 for the architecture's default.</summary>
    public int ImageSize { get; init; }
    public int Channels { get; init; } = 3;
    /// <summary>Optional pretrained weights (safetensors with the architecture's parameter names).</summary>
    public string? WeightsPath { get; init; }
    /// <summary>Forward ONNX model to import, for providers that import files.</summary>
    public string? ModelPath { get; init; }
    public int Seed { get; init; }
}

/// <summary>A forward model ready for the compiler: logits as its first output, input (N, C, H, W).</summary>
public sealed record ModelDefinition
{
    public required Model Forward { get; init; }
    public required string InputName { get; init; }
    public required int ImageSize { get; init; }
    public required int Channels { get; init; }
    /// <summary>Per-channel normalization the model expects (after scaling pixels to [0, 1]).</summary>
    public required float[] Mean { get; init; }
    public required float[] Std { get; init; }
    public string Description { get; init; } = "";
}

/// <summary>A model plugin: builds forward graphs for the architectures it knows.</summary>
public interface IModelProvider
{
    string Name { get; }
    IReadOnlyList<string> Architectures { get; }
    string Description { get; }
    ModelDefinition Create(ModelRequest request);
}

/// <summary>A model cannot be built or its weights loaded; the message names the file or setting.</summary>
public class ModelException : Exception
{
    public ModelException(string message, Exception? inner = null) : base(message, inner) { }
}
