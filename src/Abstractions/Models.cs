using OrtFinetune.Onnx;

namespace OrtFinetune.Abstractions;

/// <summary>What the host asks a <see cref="IModelProvider"/> to build (from the command line and the dataset).</summary>
public sealed record ModelRequest
{
    /// <summary>Architecture name as listed by the provider (e.g. "vit-small", "vit-b16", "vit-l16", "onnx").</summary>
    public required string Architecture { get; init; }
    /// <summary>Number of classes of the dataset: the size of the logits' last axis.</summary>
    public required int NumClasses { get; init; }
    /// <summary>Input image side in pixels (square), or 0 for the architecture's default.</summary>
    public int ImageSize { get; init; }
    /// <summary>Channels of the input images the host will feed (3 today: grayscale data is expanded to RGB).</summary>
    public int Channels { get; init; } = 3;
    /// <summary>Optional pretrained weights: a safetensors file, a folder, or a sharded index (model.safetensors.index.json).</summary>
    public string? WeightsPath { get; init; }
    /// <summary>Parameter naming of the weights (e.g. "torchvision", "hf", "timm"), or null/"auto" to detect it from the keys.</summary>
    public string? WeightsFormat { get; init; }
    /// <summary>Forward ONNX model to import, for providers that import files.</summary>
    public string? ModelPath { get; init; }
    /// <summary>The run's seed (<c>--seed</c>): initial weights must depend on it alone.</summary>
    public int Seed { get; init; }
}

/// <summary>A forward model ready for the compiler: logits as its first output, input (N, C, H, W).</summary>
public sealed record ModelDefinition
{
    /// <summary>
    /// The forward graph: one float input (N, C, H, W) with a symbolic batch dimension, the logits (N, classes)
    /// as its first output. Float initializers are the trainable parameters; constants that must not train go
    /// in Constant nodes. Built from standard ONNX operators that the training compiler has gradient rules for.
    /// </summary>
    public required Model Forward { get; init; }
    /// <summary>Name of the image input of <see cref="Forward"/>.</summary>
    public required string InputName { get; init; }
    /// <summary>Side of the square input images in pixels; the host resizes samples to it.</summary>
    public required int ImageSize { get; init; }
    /// <summary>Channels of the input (C).</summary>
    public required int Channels { get; init; }
    /// <summary>Per-channel normalization the model expects (after scaling pixels to [0, 1]).</summary>
    public required float[] Mean { get; init; }
    /// <summary>Per-channel standard deviation the model expects; every value positive and finite.</summary>
    public required float[] Std { get; init; }
    /// <summary>One line for the run's log and summary, e.g. the architecture and parameter count.</summary>
    public string Description { get; init; } = "";
    /// <summary>
    /// Depth of each parameter for layer-wise learning-rate decay (BEiT/MAE finetuning recipes): 0 for the
    /// embeddings, i + 1 for encoder block i, <see cref="NumLayers"/> + 1 for the final norm and the head;
    /// null when the model has no such structure. See <see cref="LayerDecay"/>.
    /// </summary>
    public IReadOnlyDictionary<string, int>? LayerIds { get; init; }
    /// <summary>Number of encoder blocks the <see cref="LayerIds"/> count.</summary>
    public int NumLayers { get; init; }
    /// <summary>
    /// The classification head's parameters (those a new class count replaces), which a head-only warm-up trains
    /// alone (<c>--head-warmup-epochs</c>); null when the model does not say which they are.
    /// </summary>
    public IReadOnlyList<string>? HeadParameters { get; init; }
    /// <summary>What loading pretrained weights did (loaded, missing, unexpected, reshaped tensors), as text; null without weights.</summary>
    public string? WeightsReport { get; init; }
}

/// <summary>A model plugin: builds forward graphs for the architectures it knows.</summary>
public interface IModelProvider
{
    /// <summary>The provider's name, for messages.</summary>
    string Name { get; }
    /// <summary>The names used on the command line (<c>--model NAME</c>); lower-case, unique among all plugins.</summary>
    IReadOnlyList<string> Architectures { get; }
    /// <summary>One line for <c>ortfinetune plugins</c>.</summary>
    string Description { get; }
    /// <summary>
    /// Builds <see cref="ModelRequest.Architecture"/> with fresh (seeded) or loaded weights. A bad setting or
    /// weights file throws <see cref="ModelException"/> naming it; any other exception is reported by the host
    /// as a failure of this plugin.
    /// </summary>
    ModelDefinition Create(ModelRequest request);

    /// <summary>
    /// The input sizes an architecture takes, known before it is built (for the host's automatic image size);
    /// null when the provider cannot tell without building it (an imported file, an architecture read from weights).
    /// </summary>
    ModelInputSize? InputSize(string architecture) => null;
}

/// <summary>The input sizes an architecture takes (<see cref="IModelProvider.InputSize"/>).</summary>
/// <param name="DefaultSize">The side in pixels the architecture is built for when the request gives none.</param>
/// <param name="Multiple">Every side must be a multiple of this (a ViT's patch size; 1 = any).</param>
public sealed record ModelInputSize(int DefaultSize, int Multiple);

/// <summary>A model cannot be built or its weights loaded; the message names the file or setting.</summary>
public class ModelException : Exception
{
    /// <summary>An error whose <paramref name="message"/> names the file or setting.</summary>
    public ModelException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// Writes a trained model's weights in another library's format (registered by model plugins, found by the
/// host's export verb): e.g. safetensors with torchvision, Hugging Face or timm parameter names.
/// </summary>
public interface IWeightExporter
{
    /// <summary>File format written, e.g. "safetensors".</summary>
    string Format { get; }
    /// <summary>Parameter namings it can write, e.g. "torchvision", "hf", "timm".</summary>
    IReadOnlyList<string> Namings { get; }
    /// <summary>Writes the float initializers of <paramref name="inference"/> to <paramref name="path"/>; returns a one-line summary.</summary>
    string Export(Model inference, string path, string naming);
}

/// <summary>
/// Layer-wise learning-rate decay as in BEiT/MAE finetuning: lr(p) = lr * decay^(layers + 1 - layer_id(p)), with
/// <c>layers</c> = <see cref="ModelDefinition.NumLayers"/> (the encoder blocks) and the ids of
/// <see cref="ModelDefinition.LayerIds"/> (0 embeddings .. layers + 1 final norm and head). That is MAE's
/// util/lr_decay.py exactly: its num_layers is blocks + 1, get_layer_id_for_vit gives cls_token, pos_embed and
/// patch_embed 0, blocks.i i + 1 and everything else num_layers, and the scale is decay^(num_layers - layer_id);
/// so the head and final norm get 1 and the embeddings decay^(blocks + 1).
/// </summary>
public static class LayerDecay
{
    /// <summary>The learning-rate multiplier of a parameter at depth <paramref name="layerId"/> of <paramref name="numLayers"/> blocks.</summary>
    public static double Scale(int layerId, int numLayers, double decay) => Math.Pow(decay, numLayers + 1 - layerId);

    /// <summary>The multiplier of every parameter of <paramref name="model"/>; null when it has no layer ids.</summary>
    public static IReadOnlyDictionary<string, double>? Scales(ModelDefinition model, double decay) =>
        model.LayerIds?.ToDictionary(kv => kv.Key, kv => Scale(kv.Value, model.NumLayers, decay));
}
