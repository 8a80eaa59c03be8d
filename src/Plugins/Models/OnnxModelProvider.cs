using System.Globalization;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>
/// Imports a forward ONNX classifier (request.ModelPath): one image input (N, C, H, W), logits (N, classes)
/// first output. The final Gemm/MatMul(+Add) head is re-initialized for request.NumClasses.
/// </summary>
public sealed class OnnxModelProvider : IModelProvider
{
    public const string Architecture = "onnx";
    static readonly float[] ImageNetMean = [0.485f, 0.456f, 0.406f], ImageNetStd = [0.229f, 0.224f, 0.225f];

    public string Name => "onnx";
    public IReadOnlyList<string> Architectures { get; } = [Architecture];
    public string Description =>
        "imports a forward ONNX classifier (one (N, C, H, W) input, logits first output) and re-initializes its final Gemm/MatMul head for the requested classes; "
        + "normalization from metadata 'ortfinetune.mean'/'ortfinetune.std' (comma-separated), else ImageNet's";

    public ModelDefinition Create(ModelRequest request)
    {
        if (!string.Equals(request.Architecture, Architecture, StringComparison.OrdinalIgnoreCase))
            throw new ModelException($"the onnx provider builds architecture '{Architecture}', not '{request.Architecture}'");
        if (string.IsNullOrEmpty(request.ModelPath)) throw new ModelException("architecture 'onnx' needs a model file (ModelPath)");
        if (request.NumClasses <= 0) throw new ModelException($"number of classes must be positive (got {request.NumClasses})");
        var path = request.ModelPath;
        var model = OnnxImport.Load(path);
        var (input, logits) = OnnxImport.Validate(model, path);
        var shape = input.Type.Shape!;
        long channels = shape[1].Value!.Value;
        if (channels != request.Channels)
            throw new ModelException($"{path}: input '{input.Name}' has {channels} channels but {request.Channels} were requested");
        int imageSize;
        if (shape[2].IsKnown || shape[3].IsKnown)
        {
            if (!shape[2].IsKnown || !shape[3].IsKnown || shape[2].Value != shape[3].Value)
                throw new ModelException($"{path}: input '{input.Name}' {input.Type} is not a square image of fixed size");
            imageSize = checked((int)shape[2].Value!.Value);
            if (request.ImageSize > 0 && request.ImageSize != imageSize)
                throw new ModelException($"{path}: input '{input.Name}' is {imageSize}x{imageSize} but image size {request.ImageSize} was requested");
        }
        else if (request.ImageSize > 0) imageSize = request.ImageSize;
        else throw new ModelException($"{path}: input '{input.Name}' {input.Type} has no fixed image size; set the image size");

        var notes = new List<string>();
        if (request.WeightsPath != null)
        {
            var head = OnnxImport.FindHead(model, logits.Name);
            var report = WeightLoader.Load(model, request.WeightsPath, head == null ? [] : new[] { head.Weight, head.Bias }.OfType<string>().ToList());
            notes.Add($"loaded {report.Loaded} tensors from {request.WeightsPath}");
            notes.AddRange(report.Notes);
        }
        notes.Add(OnnxImport.ReplaceHead(model, path, request.NumClasses, request.Seed));

        return new ModelDefinition
        {
            Forward = model,
            InputName = input.Name,
            ImageSize = imageSize,
            Channels = (int)channels,
            Mean = Floats(model, "ortfinetune.mean", path, (int)channels) ?? VitModelProvider.PerChannel(ImageNetMean, (int)channels),
            Std = Floats(model, "ortfinetune.std", path, (int)channels) ?? VitModelProvider.PerChannel(ImageNetStd, (int)channels),
            Description = $"{Path.GetFileName(path)}: imported ONNX model, input '{input.Name}' {input.Type}; " + string.Join("; ", notes),
        };
    }

    static float[]? Floats(OrtFinetune.Onnx.Model m, string key, string path, int channels)
    {
        if (!m.Metadata.TryGetValue(key, out var text)) return null;
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var v = new float[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!float.TryParse(parts[i], NumberStyles.Float, CultureInfo.InvariantCulture, out v[i]))
                throw new ModelException($"{path}: metadata '{key}' = '{text}' is not a comma-separated list of numbers");
        if (v.Length != channels) throw new ModelException($"{path}: metadata '{key}' has {v.Length} values for {channels} channels");
        return v;
    }
}
